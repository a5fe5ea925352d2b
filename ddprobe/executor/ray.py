"""The Ray executor (``[study] executor = "ray"``; needs the ``ddprobe[ray]`` extra).

Each item of a map is one Ray task with ``num_cpus``/``num_gpus`` reserved and ``max_retries`` retries (a task whose
worker dies, or that raises when ``retry_exceptions``). The shared payload is put in the object store once per map
(once per :meth:`RayExecutor.share`) and each worker process deserializes it once, then keeps it for its later tasks.
Results come back to the driver, which writes the cache: workers need ddprobe (and any plugin modules: plugin files
named in the spec are shipped by value) but no shared filesystem.

Without ``address`` the first map starts a local instance (``ray.init(num_cpus=..., include_dashboard=False)``, no
network beyond localhost) which :meth:`RayExecutor.close` shuts down; an instance that was already running (a
cluster joined with ``address``, or one a test started) is left running.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import DDProbeError
from . import RayOptions, init_worker

MISSING = ("study.executor = 'ray' needs Ray, the optional extra ddprobe[ray]: pip install \"ddprobe[ray]\" "
           "(from a clone: pip install -e \".[ray]\"), or choose executor = 'processes' or 'serial'")

_STARTED_LOCAL = False  # this process started the Ray instance it uses (so close() shuts it down)
_WORKER_SHARED: OrderedDict[str, Any] = OrderedDict()  # in a Ray worker: shared payloads by object id
_REMOTE: dict[tuple, Any] = {}


def import_ray() -> Any:
    """``ray``, or a :class:`DDProbeError` (exit 2) naming the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise DDProbeError(MISSING) from exc
    return ray


class Shared:
    """A payload put in Ray's object store once; pass it as ``shared`` to any number of maps."""

    def __init__(self, ref: Any) -> None:
        self.ref = ref


def _shared_value(boxed: list) -> Any:
    """The payload behind ``[ref]`` in a worker: fetched and deserialized once per worker process, then reused."""
    ref = boxed[0]
    if ref is None:
        return None
    key = ref.hex()
    if key not in _WORKER_SHARED:
        import ray

        _WORKER_SHARED[key] = ray.get(ref)
        while len(_WORKER_SHARED) > 4:
            _WORKER_SHARED.popitem(last=False)
    else:
        _WORKER_SHARED.move_to_end(key)
    return _WORKER_SHARED[key]


def _run_task(threads: int, fn: Callable[[Any, Any], Any], boxed: list, item: Any) -> Any:
    init_worker(threads)
    return fn(_shared_value(boxed), item)


class RayExecutor:
    """Ray tasks: see the module docstring."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None, workers: int = 1) -> None:
        import_ray()  # fail now, with the extra to install, not in the middle of a study
        self.options = options or RayOptions()
        self.local_workers = workers

    # -- connection ---------------------------------------------------------------------------------------
    def connect(self) -> Any:
        """``ray``, initialized: joined to ``address`` or a local instance started now (once per process)."""
        global _STARTED_LOCAL
        ray = import_ray()
        if not ray.is_initialized():
            import logging

            opts = self.options
            kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                                  "log_to_driver": False}
            if opts.address:
                ray.init(address=opts.address, **kw)
            else:
                cpus = opts.local_cpus or (self.local_workers if self.local_workers > 1 else None)
                ray.init(num_cpus=cpus, num_gpus=None if opts.num_gpus else 0, **kw)
                _STARTED_LOCAL = True
        return ray

    @property
    def workers(self) -> int:
        ray = self.connect()
        cpus = float(ray.cluster_resources().get("CPU", 1))
        slots = cpus / max(self.options.num_cpus, 1e-9)
        if self.options.num_gpus:
            slots = min(slots, float(ray.cluster_resources().get("GPU", 0)) / self.options.num_gpus)
        return max(1, int(slots))

    def parallel(self, device: str) -> bool:
        """CPU work always; GPU work when tasks reserve GPUs (``num_gpus``), else it stays on the driver's GPU."""
        return device == "cpu" or self.options.num_gpus > 0

    def share(self, obj: Any) -> Shared:
        if isinstance(obj, Shared):
            return obj
        return Shared(self.connect().put(obj))

    def _remote(self) -> Any:
        ray = self.connect()
        o = self.options
        key = (o.num_cpus, o.num_gpus, o.max_retries, o.retry_exceptions)
        if key not in _REMOTE:
            _REMOTE[key] = ray.remote(_run_task).options(num_cpus=o.num_cpus, num_gpus=o.num_gpus,
                                                         max_retries=o.max_retries,
                                                         retry_exceptions=o.retry_exceptions)
        return _REMOTE[key]

    # -- map ----------------------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any, Any], Any], items: Iterable[Any], *, shared: Any = None,
            on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        items = list(items)
        if not items:
            return []
        ray = self.connect()
        handle = shared if isinstance(shared, Shared) else (Shared(ray.put(shared)) if shared is not None else None)
        boxed = [handle.ref if handle is not None else None]  # boxed: Ray does not resolve it; the worker does, once
        remote = self._remote()
        threads = max(1, int(self.options.num_cpus))
        fn_ref = ray.put(fn)
        refs = [remote.remote(threads, fn_ref, boxed, item) for item in items]
        index = {ref.hex(): i for i, ref in enumerate(refs)}
        results: list[Any] = [None] * len(items)
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref.hex()]
                    results[i] = _unwrap(ray, ref)
                    if on_result is not None:
                        on_result(i, results[i])
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def close(self) -> None:
        """Shut down the local instance this process started, if any."""
        global _STARTED_LOCAL
        if _STARTED_LOCAL:
            import ray

            ray.shutdown()
            _STARTED_LOCAL = False
            _REMOTE.clear()


def _unwrap(ray: Any, ref: Any) -> Any:
    """``ray.get(ref)``; a task's own exception is re-raised as itself (Ray's wrapper is also an instance of it)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise
