"""Executors: where the bags of independent work of a study run (serially, in local processes, or on Ray).

Every bag of independent trainings or measurements (agreement pools, leave-one-out retrainings, Hessian
checkpoints, sensitivity and mixing grids, evaluate seeds, a third-party probe's ``ctx.map``) goes through one
interface::

    ex = ctx.executor                       # chosen by [study] executor (or --executor)
    handle = ex.share(payload)              # optional: ship a large input once, reuse it in several maps
    results = ex.map(fn, items, shared=handle, on_result=lambda i, r: ...)

``map`` returns ``[fn(shared, item) for item in items]`` in item order. ``fn`` must be a pure function of its
inputs (seeds travel in the items), importable by name or picklable, and its results should be small: the driver
receives them and writes the cache, so workers need no shared filesystem. ``shared`` (real data, an initial
model) reaches each worker once per map (once per worker process for a :meth:`Executor.share` handle on Ray),
not once per item.

Three executors:

* ``serial`` -- everything in the calling process, in order (``[study] workers = 1``, the default).
* ``processes`` -- a local process pool of ``[study] workers`` processes on the CPU (:func:`process_map`).
* ``ray`` -- Ray tasks on a local instance or an existing cluster (:mod:`ddprobe.executor.ray`, the ``ddprobe[ray]``
  extra), with per-task CPUs/GPUs and retries.

Each worker runs torch with one intra-op thread unless configured otherwise (:func:`init_worker`, the one place a
worker's thread settings are made), so results equal the serial run's whichever executor computes them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

EXECUTORS = ("serial", "processes", "ray")

_SHARED: Any = None


def init_worker(threads: int) -> None:
    """Thread settings of a worker (a pool process or a Ray task) before it runs anything: ``threads`` torch threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _init_pool_worker(threads: int, fn: Callable[[Any, Any], Any], shared: Any) -> None:
    global _SHARED
    # [threads] the parent terminates its pool on Ctrl-C or SIGTERM (_terminate). A forked worker must not keep the
    # study's SIGTERM handler (it would turn terminate() into a KeyboardInterrupt the pool survives), and ignores
    # the SIGINT a terminal sends to the whole process group.
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    init_worker(threads)
    _SHARED = (fn, shared)


def _call(item: Any) -> Any:
    fn, shared = _SHARED
    return fn(shared, item)


def _terminate(pool: Any) -> None:
    """Stop a process pool now (an interrupt or a failed task): pending tasks are dropped, workers are killed."""
    procs = set((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    procs |= set((getattr(pool, "_processes", None) or {}).values())  # any the pool started meanwhile
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=5)  # reaped now, not whenever the pool's manager thread gets to it


def _map_here(fn: Callable[[Any, Any], Any], items: list[Any], shared: Any,
              on_result: Callable[[int, Any], None] | None) -> list[Any]:
    """``[fn(shared, item) for item in items]`` in this process, in order, reporting each result as it comes."""
    out = []
    for i, item in enumerate(items):
        out.append(fn(shared, item))
        if on_result is not None:
            on_result(i, out[-1])
    return out


def process_map(fn: Callable[[Any, Any], Any], items: Iterable[Any], *, workers: int, shared: Any = None,
                threads: int = 1, on_result: Callable[[int, Any], None] | None = None,
                start_method: str | None = None) -> list[Any]:
    """``[fn(shared, item) for item in items]`` over ``workers`` processes; results in item order.

    ``on_result(index, result)`` is called in the parent as each result arrives (for progress bars).
    ``start_method`` defaults to ``fork`` where the platform has it (workers start in milliseconds instead of
    importing torch again; like DataLoader workers they set their intra-op threads first, which keeps a forked
    OpenMP runtime safe) and ``spawn`` elsewhere. Pass ``spawn`` when the parent has initialized CUDA.
    With ``workers <= 1`` everything runs in the calling process, in order, with no pickling.
    """
    items = list(items)
    from ..threads import current

    workers = current().workers(workers)  # [threads] never more worker processes than the thread budget
    if workers <= 1 or len(items) <= 1:
        return _map_here(fn, items, shared, on_result)
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(items)
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    pool = ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx, initializer=_init_pool_worker,
                               initargs=(threads, fn, shared))  # forked: fn and shared reach workers unpickled
    try:
        futures = {pool.submit(_call, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])
    except BaseException:
        _terminate(pool)
        raise
    pool.shutdown(wait=True)
    return results


def call_plain(fn: Callable[[Any], Any], item: Any) -> Any:
    """``fn(item)`` as a map task whose shared payload is ``fn`` itself (``ctx.map`` without ``shared``)."""
    return fn(item)


def map_calls(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int,
              on_result: Callable[[int, Any], None] | None = None, threads: int = 1) -> list[Any]:
    """``[fn(item) for item in items]`` over worker processes. ``fn`` is sent once per worker."""
    return process_map(call_plain, items, workers=workers, shared=fn, threads=threads, on_result=on_result)


# -- the interface ----------------------------------------------------------------------------------------------

class Executor(Protocol):
    """What ``ctx.executor`` is. See the module docstring."""

    name: str

    @property
    def workers(self) -> int:
        """How many tasks run at once (1 for serial): for choosing how finely to split a bag."""
        ...

    def parallel(self, device: str) -> bool:
        """Whether work on ``device`` is worth shipping to workers (False: run it inline, as serial does)."""
        ...

    def share(self, obj: Any) -> Any:
        """A handle for ``obj`` to pass as ``shared`` to several maps, shipping it to the workers once."""
        ...

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """``[fn(shared, item) for item in items]`` in item order; ``on_result(i, r)`` on the driver as each ends."""
        ...

    def close(self) -> None:
        """Release what this executor started (a local Ray instance); safe to call twice."""
        ...


class SerialExecutor:
    """Everything in the calling process, in order: the reference every other executor must equal."""

    name = "serial"
    workers = 1

    def parallel(self, device: str) -> bool:
        return False

    def share(self, obj: Any) -> Any:
        return obj

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        return _map_here(fn, list(items), shared, on_result)

    def close(self) -> None:
        pass


@dataclass
class ProcessExecutor:
    """A local pool of ``workers`` forked processes on the CPU, one pool per map (today's default behaviour)."""

    workers: int = 2
    threads: int = 1
    name: str = "processes"

    def parallel(self, device: str) -> bool:
        return self.workers > 1 and device == "cpu"

    def share(self, obj: Any) -> Any:
        return obj  # forked workers inherit it: nothing is pickled

    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        import sys

        return sys.modules[__name__].process_map(fn, items, workers=self.workers, shared=shared,
                                                 threads=self.threads, on_result=on_result)

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class RayOptions:
    """``[study.ray]``: where the Ray tasks run and what each one reserves."""

    address: str | None = None  # None: start a local instance; "auto" or "ray://host:10001": join a cluster
    num_cpus: float = 1.0  # CPUs reserved per task (and torch threads per task, rounded down, at least 1)
    num_gpus: float = 0.0  # GPUs reserved per task (1: one training per GPU)
    max_retries: int = 3  # re-runs of a task whose worker died or that raised
    retry_exceptions: bool = True  # also retry a task that raised an exception (not only worker deaths)
    local_cpus: int | None = None  # CPUs of a local instance (default: [study] workers when > 1, else all)


def make_executor(kind: str = "processes", workers: int = 1, ray: Any = None) -> Executor:
    """The executor ``[study] executor`` names. ``processes`` with one worker is the serial executor.

    ``ray``: :class:`RayOptions` or the spec's ``[study.ray]`` section (anything with those fields).
    """
    if ray is not None and not isinstance(ray, RayOptions):
        ray = RayOptions(**(ray.model_dump() if hasattr(ray, "model_dump") else dict(ray)))
    if kind == "processes":
        from ..threads import current

        workers = current().workers(workers)  # [threads] never more worker processes than the thread budget
    if kind == "serial" or (kind == "processes" and workers <= 1):
        return SerialExecutor()
    if kind == "processes":
        return ProcessExecutor(workers)
    if kind == "ray":
        from .ray import RayExecutor

        return RayExecutor(ray or RayOptions(), workers)
    raise ValueError(f"unknown executor {kind!r}; valid: {', '.join(EXECUTORS)}")
