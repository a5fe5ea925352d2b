"""Checks of a parsed spec that go beyond one key: expectation metrics a study can produce, and the machine.

* :func:`check_expectation_metrics` (part of every spec load): an expectation whose metric no probe of the
  study can ever produce is a spec problem. A probe declares what it can produce with an optional
  ``metric_names(sets, models, options) -> list[str]`` method (names or ``fnmatch`` globs, given every set the
  study will have, controls included, and every ``[models]`` name); probes without it are not checked.
* :func:`check_environment` (``ddprobe validate`` and ``run``): what the spec asks of this machine that can be
  checked without loading data or training: the device exists, the cache folder is a folder, imported files
  exist.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import SpecError
from .expectations import FINDING_PREFIX, is_glob

if TYPE_CHECKING:
    from .context import ModelSpec
    from .spec import DistilledSpec, ProbeSpec, Spec

CONTROL_GLOB = "random_ipc*"


def study_set_names(distilled: dict[str, DistilledSpec], control: bool) -> list[str]:
    """Every set a study will have: declared ones, then the random-real controls it adds (study.control_specs).

    An imported set's control depends on the images per class found in its file, so it is the glob
    ``random_ipc*`` here.
    """
    names = list(distilled)
    if not control:
        return names
    ipcs = sorted({d.ipc for d in distilled.values() if d.distiller not in (None, "random") and d.ipc})
    names += [f"random_ipc{k}" for k in ipcs if f"random_ipc{k}" not in distilled]
    if any(d.path is not None for d in distilled.values()):
        names.append(CONTROL_GLOB)
    return names


Token = tuple[str, Any]  # ("*", None) | ("?", None) | ("=", char) | ("[", (negated, chars))


def _tokens(pattern: str) -> list[Token]:
    """An fnmatch pattern as tokens: ``*``, ``?``, a literal character, or a ``[...]`` class."""
    out: list[Token] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[":
            end = pattern.find("]", i + 2)
            if end != -1:
                body = pattern[i + 1:end]
                negated = body[:1] in ("!", "^")
                body = body[1:] if negated else body
                chars: set[str] = set()
                k = 0
                while k < len(body):
                    if k + 2 < len(body) and body[k + 1] == "-":
                        chars |= {chr(c) for c in range(ord(body[k]), ord(body[k + 2]) + 1)}
                        k += 3
                    else:
                        chars.add(body[k])
                        k += 1
                out.append(("[", (negated, frozenset(chars))))
                i = end + 1
                continue
        out.append((ch, None) if ch in "*?" else ("=", ch))
        i += 1
    return out


def _one_char_overlap(x: Token, y: Token) -> bool:
    if x[0] == "?" or y[0] == "?":
        return True
    if x[0] == "=" and y[0] == "=":
        return x[1] == y[1]
    if x[0] == "=":
        x, y = y, x
    if y[0] == "=":  # x is a class
        negated, chars = x[1]
        return (y[1] in chars) != negated
    (nx, cx), (ny, cy) = x[1], y[1]
    return nx or ny or bool(cx & cy)  # two classes: exact unless one is negated (then: possibly)


def globs_overlap(a: str, b: str) -> bool:
    """Whether some string matches both fnmatch patterns (exact, except that two negated classes count as
    overlapping: it may say yes where the answer is no, never the other way round)."""
    ta, tb = _tokens(a), _tokens(b)
    # ok[i][j]: the suffixes ta[i:] and tb[j:] can match a common string
    ok = [[False] * (len(tb) + 1) for _ in range(len(ta) + 1)]
    for i in range(len(ta), -1, -1):
        for j in range(len(tb), -1, -1):
            x = ta[i] if i < len(ta) else None
            y = tb[j] if j < len(tb) else None
            if x is None and y is None:
                ok[i][j] = True
            elif x is not None and x[0] == "*":
                ok[i][j] = ok[i + 1][j] or (y is not None and ok[i][j + 1])
            elif y is not None and y[0] == "*":
                ok[i][j] = ok[i][j + 1] or (x is not None and ok[i + 1][j])
            elif x is not None and y is not None and _one_char_overlap(x, y):
                ok[i][j] = ok[i + 1][j + 1]
    return ok[0][0]


def could_match(metric: str, names: Iterable[str]) -> bool:
    """Whether an expectation key (a name or a glob) can match one of a probe's declared names (or globs)."""
    for name in names:
        if is_glob(name) or is_glob(metric):
            if globs_overlap(metric, name):
                return True
        elif name == metric:
            return True
    return False


def _hint(metric: str, names: Sequence[str], shown: int = 12) -> str:
    close = difflib.get_close_matches(metric, list(names), n=3, cutoff=0.5)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    if not names:
        return "it produces no metric for this study"
    listed = ", ".join(repr(n) for n in names[:shown])
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return f"it can produce: {listed}{more}"


def declared_metrics(probe: ProbeSpec, sets: list[str], models: list[str]) -> list[str] | None:
    """The metric names (or globs) a probe declares for this study; ``None`` when it does not declare them."""
    declare = getattr(probe.plugin, "metric_names", None)
    if not callable(declare):
        return None
    try:
        names = declare(list(sets), list(models), probe.options)
    except Exception:  # a plugin's declaration that fails is no reason to refuse the spec; the kit tests it
        return None
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return None
    return list(dict.fromkeys(names))


def check_expectation_metrics(probes: list[ProbeSpec], distilled: dict[str, DistilledSpec],
                              models: dict[str, ModelSpec], control: bool, problems: list[str]) -> None:
    """Add a problem for each expectation whose metric its probe can never produce in this study.

    Keys starting with ``finding:`` name findings, not metrics, and are left to their own check.
    """
    sets = study_set_names(distilled, control)
    for probe in probes:
        reads = [(e.metric, key) for e in probe.expect for key in e.metric_keys() if not key.startswith(FINDING_PREFIX)]
        if not reads:
            continue
        names = declared_metrics(probe, sets, list(models))
        if names is None:
            continue
        where = probe.where or f"probe {probe.id!r}"
        for spec_key, metric in dict.fromkeys(reads):
            if not could_match(metric, names):
                what = "a metric named" if metric == spec_key else "the metric it compares with,"
                problems.append(f"{where}.expect.{spec_key}: probe {probe.kind!r} cannot produce {what} "
                                f"{metric!r} in this study; {_hint(metric, names)}")


def device_problem(device: str) -> str | None:
    """Why ``[study] device`` does not exist on this machine (``None`` when it does; ``auto`` always does)."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return (f"study.device: {device!r} but CUDA is not available on this machine (torch "
                    f"{torch.__version__}); use 'auto' (picks what exists) or 'cpu'")
        n = torch.cuda.device_count()
        if ":" in device and int(device.split(":")[1]) >= n:
            return (f"study.device: {device!r} but this machine has {n} GPU(s); valid: 'cuda', "
                    + ", ".join(f"'cuda:{i}'" for i in range(n)))
    elif device == "mps":
        import torch

        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            return "study.device: 'mps' but the Apple MPS backend is not available; use 'auto' or 'cpu'"
    return None


def environment_problems(spec: Spec) -> list[str]:
    """What this machine cannot give the spec, found without loading data or training (empty when all is well)."""
    problems: list[str] = []
    device = device_problem(spec.study.device)
    if device is not None:
        problems.append(device)
    if spec.study.cache_dir:
        cache = spec.base_dir / spec.study.cache_dir
        if cache.exists() and not cache.is_dir():
            problems.append(f"study.cache_dir: {cache} exists and is not a folder")
    for name, dspec in spec.distilled.items():
        if dspec.path is not None and not dspec.path.exists():
            problems.append(f"distilled.{name}.path: {dspec.path} does not exist")
    return problems


def check_environment(spec: Spec) -> None:
    """Raise :class:`SpecError` (exit 2) naming the spec file when :func:`environment_problems` finds any."""
    problems = environment_problems(spec)
    if problems:
        raise SpecError(problems, file=str(spec.path) if spec.path else None)


def output_problem(output: Any) -> str | None:
    """Why ``output`` cannot be a study's output folder (``None`` when it can: absent or a folder)."""
    from pathlib import Path

    path = Path(output)
    if "\x00" in str(output):
        return f"--output {str(output)!r}: contains a NUL byte"
    if path.exists() and not path.is_dir():
        return f"--output {path}: exists and is not a folder; give a folder (it is created when missing)"
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            return f"--output {path}: {parent} is not a folder"
    return None
