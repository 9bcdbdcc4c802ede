"""What each config field means, for ``warpgrad train --show-config``.

A field's description is the string literal right under it in its dataclass, an attribute
docstring (Sphinx and editors show it too; OmegaConf never sees it)::

    inner_lr: float = 0.1
    \"\"\"SGD step size of the adaptation (task) parameters θ.\"\"\"

Every field of every experiment config has one (tests/test_config_docs.py).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import textwrap
from typing import Any

import yaml

KIND_DOC = "experiment kind: the config schema and the code that runs it"


@functools.cache
def field_docs(config_cls: type) -> dict[str, str]:
    """``{field name: one-line description}`` of a config dataclass (and of its dataclass
    bases), read from the string literal under each field; fields without one are absent,
    and so is everything when the source is not available (a build without ``.py`` files)."""
    docs: dict[str, str] = {}
    for cls in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(cls):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body
        for node, after in itertools.pairwise(body):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def commented_yaml(kind: str, config: Any) -> str:
    """The resolved config as YAML (``kind`` first, then every field in order), each key
    under a ``# description`` comment: the same values as the plain YAML dump."""
    docs = {"kind": KIND_DOC, **field_docs(type(config))}
    parts = []
    for key, value in {"kind": kind, **dataclasses.asdict(config)}.items():
        if docs.get(key):
            parts.append(f"# {docs[key]}\n")
        parts.append(yaml.safe_dump({key: value}, sort_keys=False))
    return "".join(parts)
