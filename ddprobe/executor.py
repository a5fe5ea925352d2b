"""A process-pool map for bags of independent CPU trainings.

``process_map(fn, items, workers=2, shared=payload)`` calls ``fn(shared, item)`` for every item in ``workers``
worker processes and returns the results in item order. ``shared`` (data, an initial model) is pickled once per
worker, not once per item. Each worker runs torch with ``threads`` intra-op threads (default 1): for small models
two single-threaded processes beat one process with two threads on a 2-core CPU (docs/benchmarks.md, Influence).

``fn`` must be importable by name (a module-level function), and every item must be picklable. With
``workers <= 1`` everything runs in the calling process, in order, with no pickling.

``StudyContext.map`` uses :func:`map_calls` when ``[study] workers > 1`` and the device is the CPU; the influence
probe uses :func:`process_map` directly, to send its data once per worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

_SHARED: Any = None


def _init_worker(threads: int, shared: Any) -> None:
    global _SHARED
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    _SHARED = shared


def _call(fn: Callable[[Any, Any], Any], item: Any) -> Any:
    return fn(_SHARED, item)


def process_map(fn: Callable[[Any, Any], Any], items: Iterable[Any], *, workers: int, shared: Any = None,
                threads: int = 1, on_result: Callable[[int, Any], None] | None = None,
                start_method: str | None = None) -> list[Any]:
    """``[fn(shared, item) for item in items]`` over ``workers`` processes; results in item order.

    ``on_result(index, result)`` is called in the parent as each result arrives (for progress bars).
    ``start_method`` defaults to ``fork`` where the platform has it (workers start in milliseconds instead of
    importing torch again; like DataLoader workers they set their intra-op threads first, which keeps a forked
    OpenMP runtime safe) and ``spawn`` elsewhere. Pass ``spawn`` when the parent has initialized CUDA.
    """
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        out = []
        for i, item in enumerate(items):
            out.append(fn(shared, item))
            if on_result is not None:
                on_result(i, out[-1])
        return out
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(items)
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(start_method)
    with ProcessPoolExecutor(max_workers=min(workers, len(items)), mp_context=ctx, initializer=_init_worker,
                             initargs=(threads, shared)) as pool:
        futures = {pool.submit(_call, fn, item): i for i, item in enumerate(items)}
        for fut in as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])
    return results


def _call_shared_fn(fn: Callable[[Any], Any], item: Any) -> Any:
    return fn(item)


def map_calls(fn: Callable[[Any], Any], items: Iterable[Any], *, workers: int,
              on_result: Callable[[int, Any], None] | None = None, threads: int = 1) -> list[Any]:
    """``[fn(item) for item in items]`` over worker processes: the shape ``StudyContext.map`` needs.

    ``fn`` (a module-level function or a ``functools.partial`` of one) is sent once per worker.
    """
    return process_map(_call_shared_fn, items, workers=workers, shared=fn, threads=threads, on_result=on_result)
