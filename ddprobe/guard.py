"""Probes cannot change what the next probe sees: each gets copies of the distilled sets, and the real data is
checked after it ran.

torch has no read-only tensors, so the guard combines two things. The distilled sets a probe reads through
``ctx.distilled`` (or ``ctx.select_sets``) are clones made for that probe (sets are small); the study's own sets
stay untouched whatever the probe does. The real data (too large to copy for every probe) is hashed after each
probe and compared with its hash from before; when it changed it is reloaded from the dataset plugin. Either
change fails the probe with a message that names what it changed, before its result could be cached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import DDProbeError

if TYPE_CHECKING:
    from .context import StudyContext
    from .data import DistilledSet, RealData


class InputMutatedError(DDProbeError):
    """A probe changed a distilled set or the real data in place."""


def _clone(ds: DistilledSet) -> DistilledSet:
    from dataclasses import replace

    return replace(ds, images=ds.images.clone(), labels=ds.labels.clone(), classes=list(ds.classes),
                   manifest=ds.manifest.model_copy(deep=True))


def real_hashes(real: RealData) -> tuple[str, str]:
    from .data import content_hash

    return content_hash(real.train.images, real.train.labels), content_hash(real.test.images, real.test.labels)


class InputGuard:
    """Hands a probe copies of the sets (on construction) and checks what it may have changed.

    ``check(probe_id)`` raises :class:`InputMutatedError` when the probe changed a set's images or labels or the
    real data; ``release()`` puts the study's own sets back and reloads the real data (with ``reload_real``) if it
    was changed, also after a probe that failed.
    """

    def __init__(self, ctx: StudyContext, reload_real: Callable[[], RealData] | None = None):
        self.ctx, self.reload_real = ctx, reload_real
        self.originals = ctx.distilled
        ctx.distilled = {name: _clone(ds) for name, ds in self.originals.items()}
        self.copies = dict(ctx.distilled)
        self.real = ctx.real
        cached = getattr(ctx, "_real_hashes", None)
        if cached is None or cached[0] is not ctx.real:
            cached = (ctx.real, real_hashes(ctx.real))
            ctx._real_hashes = cached  # type: ignore[attr-defined]  (hashed once per study, then after each probe)
        self.real_before = cached[1]

    def changed(self) -> list[str]:
        from .data import content_hash

        out = []
        for name, ds in self.copies.items():
            original = self.originals[name]
            if content_hash(ds.images, ds.labels) != original.manifest.sha256:
                out.append(f"distilled set {name!r}")
        after = real_hashes(self.real)
        for part, before, now in zip(("training", "test"), self.real_before, after, strict=True):
            if before != now:
                out.append(f"the real {part} data")
        self.real_after = after
        return out

    def check(self, probe_id: str) -> None:
        changed = self.changed()
        if changed:
            raise InputMutatedError(
                f"probe {probe_id!r} changed {', '.join(changed)} in place; probes must leave their inputs "
                f"unchanged (copy a tensor before changing it: x = ds.images.clone()). Its result is not kept or "
                f"cached, and the next probes see the unchanged data.")

    def release(self) -> None:
        ctx = self.ctx
        ctx.distilled = self.originals
        after = getattr(self, "real_after", None) or real_hashes(self.real)
        if after == self.real_before:
            ctx.real = self.real
            return
        if self.reload_real is None:
            raise InputMutatedError("the real data was changed in place by a probe and cannot be reloaded")
        fresh = self.reload_real()
        if real_hashes(fresh) != self.real_before:
            raise InputMutatedError("the real data was changed by a probe and reloading it gave other data")
        ctx.real = fresh
        ctx._real_hashes = (fresh, self.real_before)  # type: ignore[attr-defined]
