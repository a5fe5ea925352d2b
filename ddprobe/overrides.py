"""``--set key.path=value``: change a parsed spec before it is validated (typed by TOML, as in the spec file)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from .errors import SpecError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def parse_value(text: str) -> Any:
    """A TOML value (``0.1``, ``true``, ``"adam"``, ``[1, 2]``, ``{ a = 1 }``); bare words are strings (``cpu``)."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _step(node: Any, part: str, where: str) -> Any:
    if isinstance(node, list):
        if part.lstrip("-").isdigit():
            i = int(part)
            if -len(node) <= i < len(node):
                return i
            raise SpecError(f"--set {where}: index {i} is out of range (the list has {len(node)} entries)")
        ids = [i for i, item in enumerate(node)
               if isinstance(item, dict) and part in (item.get("id"), item.get("kind"))]
        if len(ids) == 1:
            return ids[0]
        raise SpecError(f"--set {where}: {part!r} names {'no' if not ids else 'more than one'} entry of the list; "
                        "use its index (probe.0.seeds) or a unique probe id or kind")
    return part


def apply_overrides(raw: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """A copy of ``raw`` with every ``key.path=value`` applied in order. Missing tables are created; a list entry
    is addressed by index or, for ``[[probe]]``, by its id or kind (``probe.recognition.models=["mlp"]``)."""
    out = copy.deepcopy(raw)
    for text in assignments:
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key or any(not p for p in key.split(".")):
            raise SpecError(f"--set {text!r}: expected KEY.PATH=VALUE, e.g. --set train.lr=0.1")
        parts = key.split(".")
        node: Any = out
        for depth, part in enumerate(parts[:-1]):
            where = ".".join(parts[: depth + 1])
            step = _step(node, part, where)
            if isinstance(node, dict):
                node = node.setdefault(step, {})
            else:
                node = node[step]
            if not isinstance(node, (dict, list)):
                raise SpecError(f"--set {text!r}: {where} is a value ({node!r}), not a table")
        last = _step(node, parts[-1], key)
        node[last] = parse_value(value.strip())
    return out
