"""Opening distilled-set paths safely: only regular files and folders, and ``.pt`` files without running code.

``.pt`` files are read with ``torch.load(weights_only=True)``. The reference repositories' scripts also pickle
NumPy values next to their tensors (DatasetCondensation's ``accs_all_exps`` holds ``numpy.float64`` accuracies),
which that loader refuses by default. :func:`load_pt` allows exactly what such values need, for the duration of
one load: NumPy scalars (``numpy[._]core.multiarray.scalar``), arrays (``numpy[._]core.multiarray._reconstruct``,
``numpy.ndarray``) and the ``numpy.dtype`` of booleans, integers, floats and complex numbers. Both module paths
are allowed, so files written under NumPy 1 (``numpy.core``) and NumPy 2 (``numpy._core``) load alike. Object
arrays, and every other global (``os.system``, ``builtins.eval``, any class), are still refused: nothing in the
file is executed.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...errors import DDProbeError

# dtype characters of the NumPy scalars and arrays allowed in .pt files: bool, ints, uints, floats, complex
NUMERIC_DTYPES = ("?", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16")

_LOCK = threading.Lock()  # torch keeps its allow-list process-wide; one scoped load at a time
_MEMO = threading.local()  # while an import runs: the file last read, so sniff() then load() read it once


def path_kind(path: Path) -> str:
    """'file', 'folder', or what else the path is (FIFO, socket, device); never opens it, so never blocks."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise DDProbeError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def require_readable(path: Path, folder_ok: bool = True) -> str:
    """Refuse anything but a regular file (or a folder, when ``folder_ok``), before anything opens it."""
    kind = path_kind(path)
    if kind == "missing":
        raise DDProbeError(f"distilled-set file {path} does not exist")
    if kind == "file" or (kind == "folder" and folder_ok):
        return kind
    wanted = "a regular file or a run folder" if folder_ok else "a regular file"
    raise DDProbeError(f"{path} is {kind if kind != 'folder' else 'a folder'}; a distilled set must be {wanted}")


def numpy_safe_globals() -> list[Any]:
    """The NumPy globals that scalars and numeric arrays in a pickle need, under both module paths."""
    import numpy as np

    try:
        from numpy._core import multiarray  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1
        from numpy.core import multiarray  # type: ignore[no-redef]

    allowed: list[Any] = [np.ndarray, np.dtype]
    allowed += list(dict.fromkeys(type(np.dtype(code)) for code in NUMERIC_DTYPES))
    for fn in (multiarray.scalar, multiarray._reconstruct):
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed.append((fn, f"{module}.{fn.__name__}"))
    return allowed


@contextmanager
def _numpy_allowed() -> Iterator[None]:
    import torch.serialization as ts

    with _LOCK:
        present = ts.get_safe_globals()
        with ts.safe_globals([g for g in numpy_safe_globals() if g not in present]):
            yield


@contextmanager
def reading() -> Iterator[None]:
    """Within this block each ``.pt`` file is read once however many importers sniff it."""
    stack = _MEMO.__dict__.setdefault("stack", [])
    stack.append({})
    try:
        yield
    finally:
        stack.pop()


def load_pt(path: Path) -> Any:
    """``torch.load(weights_only=True)`` of a regular file, with NumPy scalars and numeric arrays allowed."""
    import torch

    require_readable(path, folder_ok=False)
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    stack = getattr(_MEMO, "stack", None)
    memo = stack[-1] if stack else None
    if memo is not None and key in memo:
        return memo[key]
    try:
        with _numpy_allowed():
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()
        detail = next((line.strip() for line in reason if "GLOBAL" in line or "Unsupported" in line
                       or "Can only" in line or "unrecognized" in line), reason[0] if reason else type(exc).__name__)
        raise DDProbeError(
            f"{path}: cannot be read as a tensor file with weights_only=True ({detail}). ddprobe reads tensors, "
            "numbers, NumPy scalars and numeric arrays, and never runs code stored in a file."
        ) from exc
    if memo is not None:
        memo.clear()  # keep one file: the one being sniffed and loaded
        memo[key] = obj
    return obj
