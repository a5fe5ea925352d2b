"""A seeded mutation fuzz of the spec loader: each mutation of a shipped spec validates or raises SpecError.

Two mutation levels over specs/*.toml: the parsed tables (a value replaced by a hostile one of another type
or range, a key deleted, renamed or added, a table duplicated, lists emptied) through ``parse_spec``, the same
function ``load_spec`` uses; and the text (lines dropped, duplicated or cut, characters replaced, bytes that
are not UTF-8) through ``load_spec`` on a file. Anything but a Spec or a SpecError (a TypeError, KeyError,
RecursionError, ...) fails the test and prints the mutation so it can be replayed.
"""

from __future__ import annotations

import copy
import datetime
import math
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from ddprobe.errors import SpecError
from ddprobe.spec import load_spec, parse_spec, read_toml

SPECS = sorted((REPO / "specs").glob("*.toml"))
SEED = 20
TREE_MUTATIONS = 150  # per shipped spec
TEXT_MUTATIONS = 60

HOSTILE: list[Any] = [
    -1, 0, 1, 2**63, -(2**63), 10**30, -1.0, 0.0, 1e308, -1e308, math.nan, math.inf, -math.inf, True, False,
    "", " ", "str", "../../escaped", "a/b", "a\\b", "a\x00b", ".hidden", "-dash", "é" * 3, "x" * 500, "*", "auto",
    "cuda", "cuda:99", "full", "none", "learned", "random_ipc1", "real_test/convnet", ">= 0.5", "about 3",
    [], [1], [-1], ["evaluate"], [[]], [{}], [1, "a"], {}, {"a": 1}, {"kind": "evaluate"}, {"arch": "nope"},
    datetime.date(2024, 1, 1), datetime.datetime(2024, 1, 1, 12, 0), datetime.time(12, 0),
]
KEYS = ["kind", "id", "expect", "sets", "models", "model", "k", "steps", "batch_size", "augment", "recipe",
        "seeds", "ipc", "path", "importer", "distiller", "arch", "name", "device", "plugins", "dataset", "lr",
        "seeed", "formats", "input_space", "epochs", "control", "workers", "budget", "top_k", "checkpoints"]


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location in a parsed spec (the top level excluded), as a tuple of keys and indices."""
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for key, value in items:
        out.append((*prefix, key))
        out += _paths(value, (*prefix, key))
    return out


def _parent(root: Any, path: tuple) -> Any:
    for part in path[:-1]:
        root = root[part]
    return root


def mutate_tree(raw: dict, rng: random.Random) -> tuple[dict, str]:
    """One random change to a copy of ``raw``; returns it and a description for the failure message."""
    raw = copy.deepcopy(raw)
    paths = _paths(raw)
    path = rng.choice(paths)
    parent, key = _parent(raw, path), path[-1]
    op = rng.choice(["replace", "replace", "replace", "delete", "rename", "add", "wrap", "duplicate", "empty"])
    if op == "replace":
        parent[key] = copy.deepcopy(rng.choice(HOSTILE))
    elif op == "delete":
        del parent[key]
    elif op == "rename" and isinstance(parent, dict):
        parent[rng.choice(KEYS + HOSTILE[16:24])] = parent.pop(key)
    elif op == "add":
        target = parent[key] if isinstance(parent[key], (dict, list)) else parent
        value = copy.deepcopy(rng.choice(HOSTILE))
        if isinstance(target, dict):
            target[rng.choice(KEYS)] = value
        else:
            target.append(value)
    elif op == "wrap":
        parent[key] = [parent[key]] if rng.random() < 0.5 else {"x": parent[key]}
    elif op == "duplicate" and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[key]))
    elif op == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list, str)) else None
        if parent[key] is None:
            del parent[key]
    return raw, f"{op} at {'.'.join(map(str, path))}"


def mutate_text(text: str, rng: random.Random) -> tuple[bytes, str]:
    lines = text.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    op = rng.choice(["drop", "dup", "cut", "char", "latin1", "swap"])
    if op == "drop":
        del lines[i]
    elif op == "dup":
        lines.insert(i, lines[i])
    elif op == "cut":
        lines = lines[:i] + [lines[i][: rng.randrange(len(lines[i]) + 1)]]
    elif op == "char" and lines[i]:
        j = rng.randrange(len(lines[i]))
        lines[i] = lines[i][:j] + rng.choice("[]{}=\"'.,#\\-0a \n") + lines[i][j + 1:]
    elif op == "swap":
        j = rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
    data = "".join(lines).encode()
    if op == "latin1":
        data = "".join(lines).replace("a", "\u00e9", 1).encode("latin-1", errors="replace")
    return data, f"{op} at line {i + 1}"


def _loads_or_spec_error(call, what: str) -> bool:
    try:
        call()
    except SpecError:
        return False
    except Exception as exc:  # the defect this test exists for
        pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
    return True


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.name for p in SPECS])
def test_tree_mutations_validate_or_raise_spec_error(spec_file: Path):
    raw, _ = read_toml(spec_file)
    rng = random.Random(f"{SEED}:{spec_file.name}")
    accepted = 0
    for n in range(TREE_MUTATIONS):
        mutated, what = mutate_tree(raw, rng)
        accepted += _loads_or_spec_error(lambda m=mutated: parse_spec(m, spec_file),
                                         f"{spec_file.name} mutation {n} ({what})")
    assert accepted < TREE_MUTATIONS  # the mutations do reach the checks


@pytest.mark.parametrize("spec_file", SPECS, ids=[p.name for p in SPECS])
def test_text_mutations_validate_or_raise_spec_error(spec_file: Path, tmp_path):
    text = spec_file.read_text()
    rng = random.Random(f"{SEED}:text:{spec_file.name}")
    for n in range(TEXT_MUTATIONS):
        data, what = mutate_text(text, rng)
        path = tmp_path / spec_file.name
        path.write_bytes(data)
        _loads_or_spec_error(lambda p=path: load_spec(p), f"{spec_file.name} text mutation {n} ({what})")


def test_the_shipped_specs_themselves_validate():
    for spec_file in SPECS:
        load_spec(spec_file)
