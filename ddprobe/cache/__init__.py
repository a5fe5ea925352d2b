"""A content-addressed store for trained models, pools, distilled sets and probe results.

Every entry records a digest of its own files when it is written and is checked when it is read
(:mod:`ddprobe.cache.integrity`): an entry that is incomplete, damaged or cannot be parsed is reported once as a
warning naming it, removed, and counted as a miss, so the caller recomputes it. Nothing unverified is served.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .integrity import DONE, entry_problem, write_done

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

DRIVER_TOKEN_PREFIX = ".driver-"  # a file in the cache root: workers that see it use this cache (ddprobe.sets)


class CacheWarning(UserWarning):
    """A cache entry could not be trusted and is being recomputed (or a result could not be cached)."""


def default_cache_dir() -> Path:
    env = os.environ.get("DDPROBE_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ddprobe"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def remove_tree(path: Path) -> None:
    """Remove a directory so that no reader ever sees it half-removed: rename it aside first, then delete."""
    aside = path.with_name(f".del-{path.name}-{os.getpid()}")
    try:
        os.replace(path, aside)
    except OSError:
        aside = path
    shutil.rmtree(aside, ignore_errors=True)


class Cache:
    """Artifacts addressed by a hash of everything that determines them.

    ``read=False`` recomputes everything (``--no-cache``) but still writes, so the next run can reuse it.
    ``hits`` and ``misses`` count lookups per artifact kind (an entry that fails its check is a miss).
    ``warnings`` lists the entries found bad in this session; each is also issued once as a :class:`CacheWarning`
    (or passed to ``report`` when set, e.g. to print it on the console). Every key is salted with a fingerprint of
    ddprobe's own code, so a result is never served after the code that computed it changed.
    """

    def __init__(self, root: str | Path | None = None, read: bool = True, write: bool = True,
                 salt: str | None = None, report: Callable[[str], None] | None = None):
        from ..fingerprint import core_fingerprint

        self.root = Path(root) if root is not None else default_cache_dir()
        self.read, self.write = read, write
        self.salt = core_fingerprint() if salt is None else salt
        self.hits: Counter[str] = Counter()
        self.misses: Counter[str] = Counter()
        self.warnings: list[str] = []
        self.report = report
        self.fresh: set[tuple[str, str]] = set()  # (kind, key) written by this run: trusted even when read=False

    def key(self, kind: str, parts: Any) -> str:
        blob = canonical_json({"kind": kind, "parts": parts, "code": self.salt})
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    # -- integrity -----------------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        """Report a problem once per session (each message text at most once)."""
        if message in self.warnings:
            return
        self.warnings.append(message)
        if self.report is not None:
            self.report(message)
        else:
            warnings.warn(message, CacheWarning, stacklevel=3)

    def discard(self, kind: str, key: str, problem: str) -> None:
        """Warn that entry ``kind/key`` cannot be trusted (``problem`` says why) and remove it."""
        path = self.path(kind, key)
        self.warn(f"cache entry {kind}/{key} ({path}) is {problem}; ignoring it and recomputing")
        if path.exists():
            remove_tree(path)

    def readable(self, kind: str, key: str) -> bool:
        """Whether an entry may be served: always, except with ``read=False`` (``--no-cache``), where only what
        this run wrote itself is (MTT's experts, trained once and used by every set)."""
        return self.read or (kind, key) in self.fresh

    def _verified(self, kind: str, key: str) -> Path | None:
        """The entry's directory when it exists and every file matches its digest; a bad one is discarded."""
        if not self.readable(kind, key):
            return None
        path = self.path(kind, key)
        if not path.exists():
            return None
        problem = entry_problem(path)
        if problem is not None:
            self.discard(kind, key, problem)
            return None
        try:  # "last used", for ``ddprobe cache ls`` and ``prune --older-than``
            os.utime(path / DONE)
        except OSError:
            pass
        return path

    def _atomic_dir(self, target: Path, fill: Callable[[Path], None],
                    check: Callable[[Path], Any] | None = None) -> bool:
        """Fill a fresh directory, seal it with its digests, check it reads back, then rename it into place."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
        try:
            fill(tmp)
            write_done(tmp)
            if check is not None:
                try:
                    check(tmp)
                except Exception as exc:
                    self.warn(f"not caching {target.parent.name}/{target.name}: what was written does not read "
                              f"back ({type(exc).__name__}: {exc})")
                    return False
            if target.exists():
                remove_tree(target)
            try:
                os.replace(tmp, target)
            except OSError:  # another process stored the same entry meanwhile: keep theirs
                pass
            self.fresh.add((target.parent.name, target.name))
            return True
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def has(self, kind: str, key: str) -> bool:
        """A cheap check (presence and sizes, no hashing) that a complete entry exists; reads verify fully."""
        return self.readable(kind, key) and entry_problem(self.path(kind, key), full=False) is None

    # -- tensors -------------------------------------------------------------------------------------------
    def load_tensors(self, kind: str, key: str) -> dict[str, torch.Tensor] | None:
        """The verified tensors of entry ``kind/key``, or ``None`` (absent, or bad and discarded). Not counted."""
        path = self._verified(kind, key)
        if path is None:
            return None
        from safetensors.torch import load_file

        try:
            return load_file(str(path / "tensors.safetensors"))
        except Exception as exc:
            self.discard(kind, key, f"unreadable ({type(exc).__name__}: {exc})")
            return None

    def save_tensors(self, kind: str, key: str, tensors: dict[str, torch.Tensor], meta: Any = None) -> None:
        if not self.write:
            return
        from safetensors.torch import save_file

        def fill(d: Path) -> None:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(d / "tensors.safetensors"))
            (d / "meta.json").write_text(canonical_json(meta))

        self._atomic_dir(self.path(kind, key), fill)

    def load_meta(self, kind: str, key: str) -> Any:
        """The ``meta`` stored with entry ``kind/key`` (verified; not counted), or ``None``."""
        path = self._verified(kind, key)
        if path is None:
            return None
        try:
            return json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as exc:
            self.discard(kind, key, f"unreadable ({type(exc).__name__}: {exc})")
            return None

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
        found = self.load_tensors(kind, key)
        if found is not None:
            module = build()
            try:
                module.load_state_dict(found)
            except Exception as exc:
                self.discard(kind, key, f"not a state of this model ({type(exc).__name__}: {exc})")
            else:
                self.hits[kind] += 1
                module.eval()
                return module
        self.misses[kind] += 1
        module = build()
        train(module)
        self.save_tensors(kind, key, module.state_dict(), parts)
        module.eval()
        return module

    # -- json and directories ------------------------------------------------------------------------------
    def json(self, kind: str, parts: Any, compute: Callable[[], Any]) -> Any:
        key = self.key(kind, parts)
        found = self.load_directory(kind, key, lambda d: json.loads((d / "value.json").read_text()))
        if found is not None:
            return found[0]
        value = compute()
        self.store_directory(kind, key, lambda d: (d / "value.json").write_text(canonical_json(value)))
        return value

    def directory(self, kind: str, key: str) -> Path | None:
        """A finished cached directory whose files match their digests, or None. Not counted; a caller that
        cannot parse what it finds there calls :meth:`discard`. Prefer :meth:`load_directory`."""
        return self._verified(kind, key)

    def load_directory(self, kind: str, key: str, load: Callable[[Path], T]) -> tuple[T] | None:
        """``(load(directory),)`` for a verified entry, counted as a hit; ``None`` (a miss) when the entry is
        absent, fails its check, or ``load`` raises (then it is discarded with a warning)."""
        path = self._verified(kind, key)
        if path is not None:
            try:
                value = load(path)
            except Exception as exc:
                self.discard(kind, key, f"unreadable ({type(exc).__name__}: {exc})")
            else:
                self.hits[kind] += 1
                return (value,)
        self.misses[kind] += 1
        return None

    def store_directory(self, kind: str, key: str, fill: Callable[[Path], None],
                        check: Callable[[Path], Any] | None = None) -> bool:
        """Write entry ``kind/key`` atomically with its digests. ``check`` (e.g. the loader) must read the written
        directory back without raising, or nothing is stored (with a warning). Returns whether it was stored."""
        if not self.write:
            return False
        return self._atomic_dir(self.path(kind, key), fill, check)

    def stats(self) -> dict[str, dict[str, int]]:
        kinds = sorted(set(self.hits) | set(self.misses))
        return {k: {"hits": self.hits[k], "misses": self.misses[k]} for k in kinds}
