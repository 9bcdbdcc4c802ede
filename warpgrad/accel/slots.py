"""A module's forward with other tensors in place of its parameters and buffers, without
``torch.func.functional_call``'s per-call walk.

``functional_call`` finds each tensor's submodule by name and swaps it through a checked
accessor, in and out, on every call: for a small network (the sine MLP, few-shot Conv4 on
five images) that Python is a sizeable part of the forward. :class:`Slots` finds, once per
module, the dictionary entry that holds each tensor (``owner._parameters[key]`` or
``owner._buffers[key]``, every place of a tied tensor once), and a call writes the new
tensors there and puts the old ones back afterwards, as ``functional_call`` does.

Before each call it checks that the module still has the layout it found: every
submodule on the way to a slot is still where it was, and every slot still holds the
tensor it held. A replaced submodule or a reassigned parameter makes it look again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from warpgrad.engine.backend import tensor_aliases

_Store = dict  # an owner's ``_parameters`` or ``_buffers``


class Slots:
    """Where ``module`` holds each of its parameters and buffers, by the name
    ``named_parameters()`` / ``named_buffers()`` give (a tied tensor's first name)."""

    def __init__(self, module: nn.Module) -> None:
        aliases = tensor_aliases(module)  # a tied tensor's places, each place once
        self.places: dict[str, list[tuple[_Store, str]]] = {}
        self._held: list[tuple[_Store, str, Tensor]] = []
        steps: dict[tuple[int, str], tuple[dict, str, nn.Module]] = {}
        for named, kind in ((module.named_parameters, "_parameters"),
                            (module.named_buffers, "_buffers")):
            for name, tensor in named():
                for place in aliases.get(name, (name,)):
                    *path, key = place.split(".")
                    owner = module
                    for part in path:
                        child = owner._modules[part]
                        steps[(id(owner._modules), part)] = (owner._modules, part, child)
                        owner = child
                    store = getattr(owner, kind)
                    self.places.setdefault(name, []).append((store, key))
                    self._held.append((store, key, tensor))
        self._steps = list(steps.values())
        self.names = frozenset(self.places)

    def current(self) -> bool:
        """Whether the module still has the layout found (see the module docstring)."""
        return (all(modules.get(part) is child for modules, part, child in self._steps)
                and all(store.get(key) is tensor for store, key, tensor in self._held))

    def holds(self, *tensors: Mapping[str, Tensor]) -> bool:
        """Whether every name in ``tensors`` is one of :attr:`names`."""
        return all(t.keys() <= self.names for t in tensors)

    def call(self, module: nn.Module, tensors: tuple[Mapping[str, Tensor], ...],
             args: tuple[Any, ...]) -> Any:
        """``module(*args)`` with the ``tensors`` of each mapping (names in :attr:`names`) in
        their places."""
        saved = []
        try:
            for mapping in tensors:
                for name, value in mapping.items():
                    for store, key in self.places[name]:
                        saved.append((store, key, store[key]))
                        store[key] = value
            return module(*args)
        finally:
            for store, key, old in reversed(saved):
                store[key] = old
