"""A content-addressed store for trained models, pools, distilled sets and probe results."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def default_cache_dir() -> Path:
    env = os.environ.get("DDPROBE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ddprobe"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


class Cache:
    """Artifacts addressed by a hash of everything that determines them.

    ``read=False`` recomputes everything (``--no-cache``) but still writes, so the next run can reuse it.
    ``hits`` and ``misses`` count lookups per artifact kind. Every key is salted with a fingerprint of
    ddprobe's own code, so a result is never served after the code that computed it changed.
    """

    def __init__(self, root: str | Path | None = None, read: bool = True, write: bool = True,
                 salt: str | None = None):
        from .fingerprint import core_fingerprint

        self.root = Path(root) if root is not None else default_cache_dir()
        self.read, self.write = read, write
        self.salt = core_fingerprint() if salt is None else salt
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()

    def key(self, kind: str, parts: Any) -> str:
        blob = canonical_json({"kind": kind, "parts": parts, "code": self.salt})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def _atomic_dir(self, target: Path, fill: Callable[[Path], None]) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            fill(tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def has(self, kind: str, key: str) -> bool:
        return self.read and (self.path(kind, key) / "done").exists()

    # -- tensors -------------------------------------------------------------------------------------------
    def load_tensors(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        if not self.has(kind, key):
            return None
        from safetensors.torch import load_file

        return load_file(str(self.path(kind, key) / "tensors.safetensors"))

    def save_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: Any = None) -> None:
        if not self.write:
            return
        from safetensors.torch import save_file

        def fill(d: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(d / "tensors.safetensors"))
            (d / "meta.json").write_text(canonical_json(meta))
            (d / "done").write_text("")

        self._atomic_dir(self.path(kind, key), fill)

    def load_meta(self, kind: str, key: str) -> Any:
        return json.loads((self.path(kind, key) / "meta.json").read_text())

    def lookup_tensors(self, kind: str, parts: Any) -> dict[str, torch.Tensor] | None:
        """The cached tensors for ``parts`` (counted as a hit), or ``None`` (counted as a miss)."""
        found = self.load_tensors(kind, self.key(kind, parts))
        if found is not None:
            self.hits[kind] += 1
        else:
            self.misses[kind] += 1
        return found

    def store_tensors(self, kind: str, parts: Any, tensors: dict[str, torch.Tensor]) -> None:
        """Store tensors computed after a :meth:`lookup_tensors` miss (when computing is deferred, e.g. to workers)."""
        self.save_tensors(kind, self.key(kind, parts), tensors, parts)

    def tensors(self, kind: str, parts: Any, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Get cached tensors for ``parts`` or compute, store and return them."""
        found = self.lookup_tensors(kind, parts)
        if found is not None:
            return found
        out = compute()
        self.store_tensors(kind, parts, out)
        return out

    # -- models ----------------------------------------------------------------------------------------------
    def model(self, kind: str, parts: Any, build: Callable[[], torch.nn.Module],
              train: Callable[[torch.nn.Module], Any]) -> torch.nn.Module:
        """A trained model: its state dict loaded from the cache into ``build()``, or trained and stored."""
        key = self.key(kind, parts)
        module = build()
        found = self.load_tensors(kind, key)
        if found is not None:
            self.hits[kind] += 1
            module.load_state_dict(found)
            module.eval()
            return module
        self.misses[kind] += 1
        train(module)
        self.save_tensors(kind, key, module.state_dict(), parts)
        module.eval()
        return module

    # -- json and directories ------------------------------------------------------------------------------
    def json(self, kind: str, parts: Any, compute: Callable[[], Any]) -> Any:
        key = self.key(kind, parts)
        target = self.path(kind, key)
        if self.has(kind, key):
            self.hits[kind] += 1
            return json.loads((target / "value.json").read_text())
        self.misses[kind] += 1
        value = compute()
        if self.write:
            def fill(d: Path) -> None:
                (d / "value.json").write_text(canonical_json(value))
                (d / "done").write_text("")

            self._atomic_dir(target, fill)
        return value

    def directory(self, kind: str, key: str) -> Path | None:
        """A finished cached directory, or None."""
        return self.path(kind, key) if self.has(kind, key) else None

    def store_directory(self, kind: str, key: str, fill: Callable[[Path], None]) -> None:
        if not self.write:
            return

        def wrapped(d: Path) -> None:
            fill(d)
            (d / "done").write_text("")

        self._atomic_dir(self.path(kind, key), wrapped)

    def stats(self) -> dict[str, dict[str, int]]:
        kinds = sorted(set(self.hits) | set(self.misses))
        return {k: {"hits": self.hits[k], "misses": self.misses[k]} for k in kinds}
