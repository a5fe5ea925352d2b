"""Fingerprints of source code, so cached results are never served after the code that made them changed."""

from __future__ import annotations

import functools
import hashlib
import sys
from pathlib import Path
from typing import Any


@functools.cache
def package_fingerprint(top_level: str) -> str:
    """A hash of every ``.py`` file of an imported top-level package (or of the single module file)."""
    module = sys.modules.get(top_level)
    file = getattr(module, "__file__", None)
    if not file:
        return "unknown"
    path = Path(file)
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path.parent)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def code_fingerprint(obj: Any) -> str:
    """The fingerprint of the package that defines ``obj``'s class (a plugin's whole package, or its file)."""
    module = type(obj).__module__ if not isinstance(obj, type) else obj.__module__
    return package_fingerprint(module.split(".")[0])


def core_fingerprint() -> str:
    import ddprobe  # noqa: F401  (make sure it is in sys.modules)

    return package_fingerprint("ddprobe")
