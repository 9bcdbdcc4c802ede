"""A nestable on/off scope for module-level switches."""

from __future__ import annotations


class Scope:
    """True while any ``with scope:`` block is open (blocks may nest)."""

    def __init__(self) -> None:
        self._depth = 0

    def __enter__(self) -> None:
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1

    def __bool__(self) -> bool:
        return self._depth > 0
