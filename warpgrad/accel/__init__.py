"""The accelerator: every speed path of the library, entered through :func:`convert`.

The reference core (``warpgrad.models``, ``engine``, ``algorithms``, ``tasks``) never imports
this package. :func:`convert` swaps a model's layers for ones with faster CPU paths and puts
an :class:`AcceleratedBackend` on it, which the engine and the meta-objectives then ask for
their hot operations; the numbers stay the same (tests compare both ways to 1e-10 in
float64), only the time and memory change. The ``warpgrad`` command converts every model by
default (``accelerate=false`` turns it off); the Python API does not.

Example:
    >>> import torch.nn.functional as F
    >>> from warpgrad import accel, conv4, make_learner
    >>> model = accel.convert(conv4(5, filters=8))
    >>> model.backend
    AcceleratedBackend(precision='fp32', cuda_graphs=False, prefetch_mb=None)
    >>> learner = make_learner("warp-leap", model, F.cross_entropy, steps=5)
"""

from __future__ import annotations

from torch import nn

from warpgrad.accel.alloc import tune_allocator
from warpgrad.accel.backend import PRECISIONS, AcceleratedBackend, Precision
from warpgrad.accel.blocks import ConvBlock, is_conv_block
from warpgrad.accel.conv import Conv2d
from warpgrad.accel.norm import BatchNorm2d
from warpgrad.accel.pool import MaxPool2d
from warpgrad.accel.threads import follow_free_cores
from warpgrad.models import batch_norm
from warpgrad.models.warped import WarpedModel

__all__ = ["PRECISIONS", "AcceleratedBackend", "convert", "follow_free_cores", "tune_allocator"]


def convert(model: WarpedModel, *, precision: Precision = "fp32", cuda_graphs: bool = False,
            prefetch_mb: float | None = None) -> WarpedModel:
    """Accelerate ``model`` in place and return it (the same parameters, names and state).

    - ``nn.Conv2d`` (zero padding) becomes :class:`~warpgrad.accel.conv.Conv2d`,
      ``nn.MaxPool2d`` :class:`~warpgrad.accel.pool.MaxPool2d` and ``nn.BatchNorm2d``
      :class:`~warpgrad.accel.norm.BatchNorm2d`, which compute only the second-derivative
      terms that are asked for, save less for their backward, and keep channels-last
      batch statistics accurate;
    - a Conv4 block (``nn.Sequential`` of conv, max-pool, batch norm, ReLU) becomes a
      :class:`~warpgrad.accel.blocks.ConvBlock` that runs channels-last on the CPU, so the
      layers after it receive channels-last tensors (use ``.reshape``, not ``.view``, on
      them);
    - ``model.backend`` becomes an :class:`AcceleratedBackend` with ``precision``,
      ``cuda_graphs`` and ``prefetch_mb`` (see there).

    Convert before building the learner; the parameters are the same objects, so a learner
    built before still trains them, but its meta-optimisers stay the reference ones.
    """
    _swap_layers(model.module)
    model.backend = AcceleratedBackend(precision, cuda_graphs, prefetch_mb)
    return model


def _swap_layers(module: nn.Module) -> None:
    for name, child in module.named_children():
        _swap_layers(child)
        replacement = _accelerated(child)
        if replacement is not child:
            setattr(module, name, replacement)


def _accelerated(layer: nn.Module) -> nn.Module:
    """``layer``'s accelerated twin, sharing its parameters and buffers, or ``layer``."""
    if is_conv_block(layer):
        return _moved(layer, ConvBlock(*layer))
    if type(layer) is nn.Conv2d and layer.padding_mode == "zeros":
        twin = Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                      layer.padding, layer.dilation, layer.groups, layer.bias is not None,
                      device="meta")
        return _moved(layer, twin)
    if type(layer) is nn.MaxPool2d:
        twin = MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                         layer.return_indices, layer.ceil_mode)
        return _moved(layer, twin)
    # exactly these types: a subclass may compute something else in its forward
    if type(layer) in (nn.BatchNorm2d, batch_norm.BatchNorm2d):
        twin = BatchNorm2d(layer.num_features, layer.eps, layer.momentum, layer.affine,
                           layer.track_running_stats, device="meta")
        return _moved(layer, twin)
    return layer


def _moved(old: nn.Module, new: nn.Module) -> nn.Module:
    """``new`` holding ``old``'s parameters, buffers (the same tensors) and mode."""
    for name, param in old.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buffer in old.named_buffers(recurse=False):
        new.register_buffer(name, buffer, persistent=name not in old._non_persistent_buffers_set)
    for name in list(new._buffers):
        if name not in old._buffers:
            del new._buffers[name]
    for name in list(new._parameters):
        if name not in old._parameters:
            del new._parameters[name]
    new.train(old.training)
    return new
