"""A learner with its parameters split into task parameters θ and warp parameters φ.

θ is what adaptation moves; it travels through the engine as one flat vector ``[P]`` so that
an SGD step is one fused op, a trajectory point is one row of a buffer, and many points can
be batched with ``torch.func.vmap``. φ stays a dict of the module's own warp parameters,
which the meta-optimiser updates in place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from warpgrad.engine.backend import REFERENCE, Backend


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

    ``backend`` (attribute) is what runs the hot operations of the engine and the
    meta-objectives for this model (:class:`~warpgrad.engine.backend.Backend`): the
    reference implementation unless the model went through :func:`warpgrad.accel.convert`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from warpgrad import WarpedModel
        >>> net = nn.Sequential(nn.Linear(1, 40), nn.ReLU(), nn.Linear(40, 40), nn.Linear(40, 1))
        >>> model = WarpedModel(net, warps=["2"])
        >>> model.warp_names
        ('2.weight', '2.bias')
        >>> theta = model.init_theta()          # θ_0 as a flat vector [P]
        >>> y = model(torch.zeros(5, 1), theta)  # f(x; θ, φ) without touching module state
    """

    def __init__(self, module: nn.Module, warps: Iterable[str] = ()) -> None:
        super().__init__()
        self.module = module
        self.backend: Backend = REFERENCE
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
        return self.backend.forward(self.module, params, buffers, x, *args)

    @property
    def has_buffers(self) -> bool:
        """Whether the module keeps buffers (e.g. running batch-norm statistics), which batch
        norm updates in place and ``torch.func.vmap`` therefore cannot batch."""
        return next(self.module.buffers(), None) is not None

    def describe(self) -> str:
        """A table of every parameter, its shape and whether it is task (θ) or warp (φ)."""
        rows = [f"{'parameter':<40} {'shape':<20} set"]
        for spec, label in ((self.task_spec, "task θ"), (self.warp_spec, "warp φ")):
            for name, shape in zip(spec.names, spec.shapes):
                rows.append(f"{name:<40} {list(shape)!s:<20} {label}")
        rows.append(f"task parameters: {self.task_spec.numel:,}  warp parameters: "
                    f"{self.warp_spec.numel:,}")
        return "\n".join(rows)
