"""A learner with its parameters split into task parameters θ and warp parameters φ.

θ is what adaptation moves; it travels through the engine as one flat vector ``[P]`` so that
an SGD step is one fused op, a trajectory point is one row of a buffer, and many points can
be batched with ``torch.func.vmap``. φ stays a dict of the module's own warp parameters,
which the meta-optimiser updates in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from warpgrad.models._second_order import meta_backward_in_bf16
from warpgrad.models._transforms import in_any_transform

Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def to_channels_last(x: Tensor) -> Tensor:
    """``x [N, C, H, W]`` in the channels-last (NHWC) memory layout, same values.

    For ``C == 1`` the NCHW and NHWC layouts hold the same bytes and ``.contiguous(
    memory_format=torch.channels_last)`` is a no-op that convolution still reads as NCHW; the
    strides are then set explicitly, so that every convolution after it keeps channels-last.
    """
    if x.shape[1] != 1:
        return x.contiguous(memory_format=torch.channels_last)
    x = x.contiguous()
    _, _, h, w = x.shape
    return x.as_strided(x.shape, (h * w, 1, w, 1))


@dataclass(frozen=True)
class ParamSpec:
    """Layout of named tensors packed into one flat vector.

    ``names[i]`` occupies ``flat[offsets[i] : offsets[i] + numels[i]]`` with shape
    ``shapes[i]``.
    """

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(s.numel() for s in self.shapes)

    @property
    def numel(self) -> int:
        return sum(self.numels)

    @classmethod
    def of(cls, tensors: Mapping[str, Tensor]) -> ParamSpec:
        return cls(tuple(tensors), tuple(t.shape for t in tensors.values()))

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Pack ``{name: tensor}`` into ``[P]`` (differentiable)."""
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """Views of ``flat [P]`` as ``{name: tensor}`` (differentiable, vmap-friendly)."""
        chunks = torch.split(flat, self.numels)
        return {n: c.view(s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def segment_ids(self, device: torch.device | None = None) -> Tensor:
        """``[P]`` int64: for each flat entry, the index of the tensor it belongs to."""
        sizes = torch.tensor(self.numels, device=device)
        return torch.repeat_interleave(torch.arange(len(self.names), device=device), sizes)


class WarpedModel(nn.Module):
    """Wrap any ``nn.Module`` and name which of its submodules are warp layers.

    Every parameter inside a named warp submodule is a warp parameter φ; every other
    parameter is a task parameter θ. The module's own task parameters hold the meta-learned
    initialisation θ_0.

    Args:
        module: the learner. Its ``forward`` takes the input (and any extra arguments).
        warps: dotted names of the submodules that are warp layers (as in
            ``module.named_modules()``). An empty list gives a plain learner (MAML, Leap...).
        channels_last: feed 4-D inputs ``[N, C, H, W]`` in the channels-last memory layout,
            so convolutions and pooling run on NHWC data (the same computation, up to float
            rounding; the library's batch norm keeps NCHW's accuracy). Off by default: on a
            CPU, Conv4's blocks run channels-last anyway (``warpgrad.models._conv_block``),
            so this matters for other convolutional learners and on GPUs.
        precision: ``"fp32"``, or ``"bf16"`` to run the forward pass (and so its backward)
            under ``torch.autocast`` in bfloat16. Parameters, θ, the optimiser and the outputs
            stay float32. Faster where the hardware has bf16 units, but gradients are only
            approximately those of fp32 (see BENCHMARKS.md): a speed switch, off by default.
            WarpGrad's one step at θ_k always runs in float32 (:meth:`full_precision`): in
            bf16 it put a 79% error into the meta-gradient at the multi-shot protocol.
        compile: run the functional forward through ``torch.compile`` (TorchInductor), which
            fuses the element-wise layers around the convolutions in the forward and backward
            passes. The first call at each new input shape or gradient need compiles (seconds
            to a minute on a CPU; needs a C++ compiler there). A compiled graph cannot be
            differentiated twice, so a pass whose gradient is itself differentiated
            (``create_graph``) must run inside :meth:`eager`, as the engine does for MAML's
            adaptation and the exact shared step; under ``torch.func`` transforms the forward
            stays eager. Meta-gradients equal the eager ones up to float rounding (tests,
            float64). Off by default; measured in BENCHMARKS.md, figure 6.
        cuda_graphs: replay the engine's fixed-shape passes from CUDA graphs
            (:mod:`warpgrad.engine.graphs`): each adaptation step's loss and gradient (task
            by task or all tasks at once) and each offline WarpGrad update's meta-gradient,
            captured at the first call with a shape and replayed with one launch. On a GPU
            eager PyTorch spends most of a Conv4 step launching kernels; a graph removes
            that. Same results as eager (tests, float64); on the CPU the same plumbing runs
            without capture (no gain). Not used for MAML's differentiable adaptation, the
            online regime, or models with running batch-norm statistics. Off by default.

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.Linear(40, 1))
        >>> model = WarpedModel(net, warps=["2"])
        >>> model.warp_names
        ('2.weight', '2.bias')
        >>> theta = model.init_theta()          # θ_0 as a flat vector [P]
        >>> y = model(torch.zeros(5, 1), theta)  # f(x; θ, φ) without touching module state
    """

    def __init__(self, module: nn.Module, warps: Iterable[str] = (), *,
                 channels_last: bool = False, precision: Precision = "fp32",
                 compile: bool = False, cuda_graphs: bool = False) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.module = module
        self.channels_last = channels_last
        self.precision = precision
        self.compile_forward = compile
        self._compiled: object | None = None  # built on first use: compiling is lazy anyway
        self.cuda_graphs = cuda_graphs
        warps = tuple(warps)
        submodules = dict(module.named_modules())
        unknown = [w for w in warps if w not in submodules or w == ""]
        if unknown:
            known = [n for n in submodules if n]
            raise ValueError(f"no submodule named {unknown} in the model; submodules: {known}")
        self.warp_modules = warps
        task, warp = {}, {}
        for name, p in module.named_parameters():
            is_warp = any(name == w or name.startswith(w + ".") for w in warps)
            (warp if is_warp else task)[name] = p
        if not task:
            raise ValueError("the model has no task parameters: every parameter is inside a warp")
        self.task_spec = ParamSpec.of(task)
        self.warp_spec = ParamSpec.of(warp)

    @property
    def task_names(self) -> tuple[str, ...]:
        """Names of the task parameters θ, in flat-vector order."""
        return self.task_spec.names

    @property
    def warp_names(self) -> tuple[str, ...]:
        """Names of the warp parameters φ."""
        return self.warp_spec.names

    def task_parameters(self) -> dict[str, nn.Parameter]:
        """The initialisation θ_0: the module's task parameters, by name."""
        params = dict(self.module.named_parameters())
        return {n: params[n] for n in self.task_names}

    def warp_parameters(self) -> dict[str, nn.Parameter]:
        """The warp parameters φ, by name."""
        params = dict(self.module.named_parameters())
        return {n: params[n] for n in self.warp_names}

    def init_theta(self) -> Tensor:
        """θ_0 packed into ``[P]``; differentiable with respect to the module's parameters."""
        return self.task_spec.flatten(self.task_parameters())

    def load_theta(self, theta: Tensor) -> None:
        """Copy a flat ``[P]`` vector into the module's task parameters (θ_0)."""
        params = self.task_parameters()
        with torch.no_grad():
            for name, value in self.task_spec.unflatten(theta).items():
                params[name].copy_(value)

    def task_buffers(self) -> dict[str, Tensor]:
        """Fresh copies of the module's buffers (e.g. batch-norm running statistics) for one
        task; empty for the built-in learners, whose batch norm uses batch statistics."""
        return {n: b.clone() for n, b in self.module.named_buffers()}

    def forward(
        self, x: Tensor, theta: Tensor | None = None, phi: Mapping[str, Tensor] | None = None,
        *args, buffers: dict[str, Tensor] | None = None,
    ) -> object:
        """f(x; θ, φ): run the module with task parameters ``theta [P]`` (default θ_0) and warp
        parameters ``phi`` (default the module's own), without mutating the module.

        ``buffers`` is a task's own buffer dict (from :meth:`task_buffers`), which batch norm
        in training mode updates in place; by default a throwaway copy is used, so a forward
        pass never leaks statistics from one task into the next.
        """
        params: dict[str, Tensor] = {}
        if theta is not None:
            params.update(self.task_spec.unflatten(theta))
        if phi is not None:
            params.update(phi)
        if buffers is None:
            buffers = self.task_buffers()
        if self.channels_last and x.dim() == 4:
            x = to_channels_last(x)
        run = self._run
        # under torch.func transforms (vmap, grad) dynamo gives up on the frame for good, so
        # those calls stay eager
        if self.compile_forward and not in_any_transform():
            if self._compiled is None:
                self._compiled = torch.compile(self._run)
            run = self._compiled
        return run(params, buffers, x, *args)

    def _run(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor,
             *args) -> object:
        if self.precision == "fp32":
            return functional_call(self.module, (params, buffers), (x, *args), strict=False)
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = functional_call(self.module, (params, buffers), (x, *args), strict=False)
        return _to_float32(out)

    def __getstate__(self) -> dict:
        # the compiled callable and the captured graphs read this instance's tensors: a
        # copy compiles and captures its own
        return {**super().__getstate__(), "_compiled": None, "_graph_cache": None}

    @property
    def has_buffers(self) -> bool:
        """Whether the module keeps buffers (e.g. running batch-norm statistics), which batch
        norm updates in place and ``torch.func.vmap`` therefore cannot batch."""
        return next(self.module.buffers(), None) is not None

    def plain_layout(self) -> AbstractContextManager[None]:
        """Inside the block, inputs keep their own memory layout: ``torch.func.vmap`` hides a
        dimension, and channels-last cannot be set on the 4-D view of a 5-D tensor."""
        return self._switched("channels_last", False)

    @contextmanager
    def full_precision(self) -> Iterator[None]:
        """Inside the block the forward runs in float32 even with ``precision="bf16"``: for
        passes whose rounding the result cannot absorb (WarpGrad's one step at θ_k). The
        backward through the pass that builds no graph (the meta-gradient's) still runs its
        convolutions in bf16 under a bf16 model (``_second_order.meta_backward_in_bf16``)."""
        scope = meta_backward_in_bf16() if self.precision == "bf16" else nullcontext()
        with scope, self._switched("precision", "fp32"):
            yield

    def eager(self) -> AbstractContextManager[None]:
        """Inside the block the forward runs eagerly even with ``compile=True``: for passes
        whose gradient is itself differentiated (``create_graph``), which compiled graphs
        cannot do."""
        return self._switched("compile_forward", False)

    @contextmanager
    def _switched(self, switch: str, value: object) -> Iterator[None]:
        saved = getattr(self, switch)
        setattr(self, switch, value)
        try:
            yield
        finally:
            setattr(self, switch, saved)

    def describe(self) -> str:
        """A table of every parameter, its shape and whether it is task (θ) or warp (φ)."""
        rows = [f"{'parameter':<40} {'shape':<20} set"]
        for spec, label in ((self.task_spec, "task θ"), (self.warp_spec, "warp φ")):
            for name, shape in zip(spec.names, spec.shapes):
                rows.append(f"{name:<40} {list(shape)!s:<20} {label}")
        rows.append(f"task parameters: {self.task_spec.numel:,}  warp parameters: "
                    f"{self.warp_spec.numel:,}")
        return "\n".join(rows)


def _to_float32(value: object) -> object:
    """Autocast outputs back to float32 (tensors, and tensors inside tuples and lists)."""
    if isinstance(value, Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (tuple, list)):
        return type(value)(_to_float32(v) for v in value)
    return value
