"""Making a study's distilled sets: import a file, find the set in the cache, or distill it.

A set is determined by what makes it (:func:`distilled_cache_parts`), so a cached one is reused. The sets a study
must still distill are independent of each other: :func:`distill_sets` runs them as one bag on the study's
executor (``[study] executor``), one task per set, after each distiller's optional ``prepare`` step has done on the
driver the work its sets share (MTT's expert trajectories, themselves a bag). A task returns the set; the driver
checks it, stamps its manifest and writes it to the cache (:func:`finish`), exactly as when the set is distilled
in the driver.

Inside a task the distiller still reads and writes the cache for its own intermediate work (expert trajectories,
resumable checkpoints): the driver's cache when the worker can see it (local processes, a local Ray instance, a
cluster with the cache on a shared filesystem), otherwise the worker machine's own cache (``DDPROBE_CACHE_DIR`` or
``~/.cache/ddprobe`` there). Which one is decided by a token file the driver leaves in its cache while the bag runs.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .cache import DRIVER_TOKEN_PREFIX, Cache
from .cache.scan import CHECKPOINTS
from .context import DistillContext
from .guard import InputMutatedError
from .progress import Progress

if TYPE_CHECKING:
    from .data import DistilledSet, RealData
    from .spec import DistilledSpec, Spec


def distilled_cache_parts(spec: Spec, dspec: DistilledSpec, dkey: dict) -> dict[str, Any]:
    """Everything that determines a distilled set: distiller, its code, options, ipc, seed, real data, models."""
    from .fingerprint import code_fingerprint

    return {"distiller": dspec.distiller, "code": code_fingerprint(dspec.plugin),
            "options": dspec.options.model_dump(mode="json"), "ipc": dspec.ipc, "seed": spec.study.seed,
            "real": dkey,
            "models": {k: v.key() for k, v in spec.models.items()} if dspec.distiller != "random" else None}


def real_changed(real: RealData, dkey: dict[str, Any]) -> bool:
    """Whether the real data no longer hashes to what ``study.data_key`` recorded."""
    from .guard import real_hashes

    return tuple(h[:16] for h in real_hashes(real)) != (dkey.get("train"), dkey.get("test"))


def checkpoint_dir(cache: Cache) -> Path:
    """Where distillers keep resumable checkpoints: a folder of the cache (``ddprobe cache`` knows it)."""
    return cache.root / CHECKPOINTS


def distill_context(spec: Spec, real: RealData, cache: Cache, device: str, dkey: dict, progress: Progress,
                    name: str = "") -> DistillContext:
    """What a distiller receives in the driver (its own bags run on ``[study] executor``)."""
    return DistillContext(spec.study.seed, real, spec.models, spec.train, cache, device, progress, dkey,
                          spec.study.workers, spec.study.executor, spec.study.ray, name=name,
                          checkpoint_dir=checkpoint_dir(cache))


# -- import or cache ---------------------------------------------------------------------------------------------

def import_set(dspec: DistilledSpec, real: RealData) -> DistilledSet:
    """The set in ``dspec.path``, converted to the study's input space, with its content hash computed here (a
    hash its manifest claims is checked, never trusted)."""
    from .builtin.importers import import_file
    from .data import check_compatible, content_hash, verify_content_hash
    from .spaces import adopt

    where = f"{dspec.name!r} ({dspec.path})"
    ds = import_file(dspec.path, dspec.importer)
    verify_content_hash(ds, str(dspec.path))  # a hash the file's manifest claims must be the file's
    ds.classes = list(real.classes) if len(ds.classes) <= real.num_classes else ds.classes
    check_compatible(ds, real, where=where, space=False)  # shape, labels, values: before the space
    ds.manifest.warnings = adopt(ds, real, dspec.name, dspec.input_space, where=where)
    if dspec.learned_lr is not None:
        ds.manifest.learned_lr, ds.manifest.learned_lr_source = dspec.learned_lr, "spec (learned_lr)"
    if ds.manifest.input_space is None:
        ds.manifest.input_space = real.space
    ds.manifest.name = dspec.name
    ds.manifest.source_dataset = ds.manifest.source_dataset or real.name
    check_compatible(ds, real, where=where)
    ds.manifest.sha256 = content_hash(ds.images, ds.labels)  # of what the probes see, after any conversion
    return ds


def set_key(spec: Spec, dspec: DistilledSpec, cache: Cache, dkey: dict) -> str:
    return cache.key("distilled", distilled_cache_parts(spec, dspec, dkey))


def _loader(dspec: DistilledSpec, real: RealData) -> Callable[[Path], DistilledSet]:
    def load(d: Path) -> DistilledSet:
        from .data import check_compatible, load_distilled

        got = load_distilled(d / "set.safetensors")
        check_compatible(got, real, where=f"{dspec.name!r} (cached)")
        return got

    return load


def cached_set(spec: Spec, dspec: DistilledSpec, real: RealData, cache: Cache, dkey: dict) -> DistilledSet | None:
    """The set from the cache, verified against its digests and refitted to the real data; None when missing or
    damaged (then it is distilled again)."""
    found = cache.load_directory("distilled", set_key(spec, dspec, cache, dkey), _loader(dspec, real))
    if found is None:
        return None
    ds = found[0]
    ds.manifest.name = dspec.name
    return ds


# -- distill -----------------------------------------------------------------------------------------------------

@dataclass
class Made:
    """What distilling one set gave: the set (on the CPU) and its time, or the error that stopped it."""

    set: DistilledSet | None = None
    seconds: float = 0.0
    error: str | None = None  # "<ExceptionType>: <message>", as a failure in the driver is reported
    mutated: bool = False  # the distiller changed the real data it was given
    warnings: list[str] = field(default_factory=list)  # cache warnings on the worker


def distill_here(dspec: DistilledSpec, real: RealData, ctx: DistillContext, dkey: dict) -> Made:
    """Run the distiller of ``dspec`` in this process. Its exceptions propagate."""
    start = time.perf_counter()
    ds = dspec.plugin.distill(real, dspec.ipc, dspec.options, ctx)
    seconds = time.perf_counter() - start
    return Made(ds.to("cpu"), seconds, mutated="train" in dkey and real_changed(real, dkey))


def finish(spec: Spec, dspec: DistilledSpec, made: Made, real: RealData, cache: Cache, dkey: dict) -> DistilledSet:
    """On the driver: stamp the manifest, check the set against the real data, and cache it. Raises what a
    failure in the driver would have raised (a worker's error comes back as ``made.error``)."""
    from .data import check_compatible, content_hash, save_distilled

    for message in made.warnings:
        cache.warn(message)
    if made.error is not None:
        raise DistillFailed(made.error)
    ds = made.set
    assert ds is not None
    m = ds.manifest
    m.name, m.distiller, m.ipc = dspec.name, dspec.distiller, dspec.ipc
    m.options = dspec.options.model_dump(mode="json")
    m.seed, m.seconds, m.source_dataset = spec.study.seed, made.seconds, real.name
    m.input_space = m.input_space or real.space
    m.ddprobe_version = __version__
    m.sha256 = content_hash(ds.images, ds.labels)  # of what is returned, whatever the distiller's manifest said
    check_compatible(ds, real, where=repr(dspec.name))
    if made.mutated:
        raise InputMutatedError(
            f"distiller {dspec.distiller!r} changed the real data in place while making {dspec.name!r}; a "
            f"distiller must leave `real` unchanged (copy a tensor before changing it). The set is not kept or "
            f"cached, and the real data is loaded again for the rest of the study.")
    cache.store_directory("distilled", set_key(spec, dspec, cache, dkey), lambda d: save_distilled(ds, d / "set"),
                          check=_loader(dspec, real))
    return ds


class DistillFailed(Exception):
    """A distiller raised in a worker; the message is the worker's ``<ExceptionType>: <message>``."""


def failure(exc: BaseException) -> str:
    """``<ExceptionType>: <message>``: how a failed set is reported, whether it failed here or in a worker."""
    return str(exc) if isinstance(exc, DistillFailed) else f"{type(exc).__name__}: {exc}"


def build_distilled(spec: Spec, dspec: DistilledSpec, real: RealData, cache: Cache, device: str, dkey: dict,
                    progress: Progress) -> tuple[DistilledSet, bool]:
    """Import, find in the cache, or distill one set in this process. Returns (set, cached)."""
    if dspec.path is not None:
        return import_set(dspec, real), False
    found = cached_set(spec, dspec, real, cache, dkey)
    if found is not None:
        return found, True
    ctx = distill_context(spec, real, cache, device, dkey, progress, dspec.name)
    prepare_distiller(dspec.plugin, real, dspec.ipc, dspec.options, ctx)
    return finish(spec, dspec, distill_here(dspec, real, ctx, dkey), real, cache, dkey), False


def prepare_distiller(distiller: Any, real: RealData, ipc: int | None, options: Any, ctx: DistillContext) -> None:
    """The distiller's optional ``prepare(real, ipc, options, ctx)``: work its sets share (cached), on the driver."""
    prepare = getattr(distiller, "prepare", None)
    if prepare is not None:
        prepare(real, ipc, options, ctx)


# -- the bag: one task per set -----------------------------------------------------------------------------------

@dataclass
class DistillTask:
    """One set to distill on a worker: picklable, without the real data (which travels once, as ``shared``)."""

    seed: int
    models: dict[str, Any]
    recipe: Any  # [train]
    dspec: DistilledSpec
    dkey: dict
    device: str
    cache_root: str
    cache_salt: str
    cache_read: bool
    token: str  # the name of a file the driver keeps in its cache while the bag runs
    fresh: frozenset = frozenset()  # entries the driver wrote in this run (trusted under --no-cache)


def worker_cache(task: DistillTask) -> Cache:
    """The driver's cache when this worker sees it (the token file is there), else this machine's own cache."""
    from .cache import default_cache_dir

    root = Path(task.cache_root)
    shared = (root / task.token).is_file()
    cache = Cache(root if shared else default_cache_dir(), read=task.cache_read, salt=task.cache_salt,
                  report=lambda message: None)
    if shared:
        cache.fresh |= task.fresh
    return cache


def run_task(real: RealData, task: DistillTask) -> Made:
    """A worker's task: distill one set; an exception comes back as ``Made.error`` (the other sets go on)."""
    cache = worker_cache(task)
    ctx = DistillContext(task.seed, real, task.models, task.recipe, cache, task.device, data_key=task.dkey,
                         executor_kind="serial", name=task.dspec.name,
                         checkpoint_dir=checkpoint_dir(cache))
    try:
        made = distill_here(task.dspec, real, ctx, task.dkey)
    except Exception as exc:
        made = Made(error=failure(exc))
    made.warnings = list(cache.warnings)
    return made


def run_nth_task(shared: tuple[RealData, list[DistillTask]], index: int) -> Made:
    real, tasks = shared
    return run_task(real, tasks[index])


def distill_sets(spec: Spec, dspecs: list[DistilledSpec], real: RealData, cache: Cache, device: str, dkey: dict,
                 progress: Progress, executor: Any,
                 done: Callable[[DistilledSpec, Callable[[], DistilledSet], float | None], None]) -> None:
    """Distill ``dspecs`` (none imported or cached): as a bag on ``executor`` when it runs several tasks at once
    on ``device``, else one after the other here. ``done(dspec, result, seconds)`` is called on the driver as
    each set ends, in the order they end; ``result()`` gives the checked, cached set or raises its failure.
    ``seconds`` is the distiller's own time on a worker (None: the caller times ``result``)."""
    def context(name: str) -> DistillContext:
        ctx = distill_context(spec, real, cache, device, dkey, progress, name)
        ctx.use_executor(executor)
        return ctx

    ready: list[DistilledSpec] = []
    for dspec in dspecs:  # shared work first, on the driver (its own bags use the executor)
        try:
            prepare_distiller(dspec.plugin, real, dspec.ipc, dspec.options, context(dspec.name))
        except Exception as exc:
            done(dspec, _raiser(exc), None)
            continue
        ready.append(dspec)
    if len(ready) < 2 or not executor.parallel(device):
        for dspec in ready:
            with progress.task(f"distilled set {dspec.name}", total=None):
                ctx = context(dspec.name)
                done(dspec, lambda d=dspec, c=ctx: finish(spec, d, distill_here(d, real, c, dkey), real, cache,
                                                          dkey), None)
        return
    token = DRIVER_TOKEN_PREFIX + secrets.token_hex(8)
    marker = cache.root / token
    try:
        cache.root.mkdir(parents=True, exist_ok=True)
        marker.write_text("ddprobe driver of a running study: workers that see this file share its cache\n")
    except OSError:
        pass  # a read-only cache: every worker uses its own
    tasks = [DistillTask(spec.study.seed, spec.models, spec.train, d, dkey, device, str(cache.root), cache.salt,
                         cache.read, token, frozenset(cache.fresh)) for d in ready]
    finished: set[int] = set()
    try:
        with progress.task(f"distilled sets ({len(ready)}, {executor.name})", total=len(ready)) as bar:
            def arrived(i: int, made: Made) -> None:
                d = ready[i]
                finished.add(i)
                done(d, lambda: finish(spec, d, made, real, cache, dkey), made.seconds)
                bar.advance()

            # the tasks travel with the real data, once per worker (a forked worker inherits both unpickled, so a
            # plugin file's distiller need not be importable by name); the items are indices
            executor.map(run_nth_task, range(len(tasks)), shared=(real, tasks), on_result=arrived)
    except Exception as exc:  # the bag itself broke (a worker died and was not retried): the rest fail with it
        lost = DistillFailed(f"{type(exc).__name__}: {exc} (the worker distilling it, or another in the same "
                             f"pool, stopped; run the study again to retry the sets that did not finish)")
        for i, d in enumerate(ready):
            if i not in finished:
                done(d, _raiser(lost), None)
    finally:
        marker.unlink(missing_ok=True)


def _raiser(exc: Exception) -> Callable[[], Any]:
    def again() -> Any:
        raise exc

    return again
