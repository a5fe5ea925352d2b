"""How many CPU threads ddprobe may use, and how they are split between the main process and its workers.

The budget is the number of cores this process may run on: the smallest of the machine's CPU count, the CPU
affinity mask (``os.sched_getaffinity``: ``taskset``, ``numactl``, Slurm) and a cgroup CPU quota (cgroup v2
``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``: Docker ``--cpus``, Kubernetes limits). An
``OMP_NUM_THREADS`` the user exported caps the threads of each process (its OpenMP meaning), so
``OMP_NUM_THREADS=1`` with ``workers = 2`` on 2 cores runs 2 single-threaded workers. ``[study] threads`` (or
``ddprobe run --threads N``) sets the total explicitly (and then wins over ``OMP_NUM_THREADS``); it is still
capped at the cores available.

Threads per process x processes computing at the same time never exceed the budget: worker processes run one
torch thread each (so their results equal a one-thread run's, docs/scaling.md) and there are never more of them
than the budget (``[study] workers = 4`` on 2 cores starts 2), and the main process, which waits while they
compute, uses the whole budget when it computes alone. On a 2-core machine with ``workers = 2`` that is one
thread per worker.

With ``auto`` the main process also leaves alone the cores other jobs keep busy when the run starts (the
1-minute load average): on a 2-core machine with any other job running it computes with one thread, which cannot
collapse the way several spinning threads do, and on a quiet machine with both.

Why it matters: PyTorch's OpenMP threads spin while they wait for each other. When a process asks for more
threads than there are free cores (another job on a shared machine, two workers with two threads each) a thread
spins on a core that the thread it waits for needs, and a run gets 10-30x slower instead of 2x (docs/benchmarks.md,
Threads). ``ddprobe run`` therefore also sets ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) unless it is
already set; that takes effect only when set before torch is first imported, which the CLI does.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Budget:
    """``threads`` for all of ddprobe's processes together, out of ``cores`` usable cores, and why.

    ``per_process`` is a cap on each process (``OMP_NUM_THREADS``, whose meaning in OpenMP is per process).
    """

    threads: int
    cores: int
    reason: str
    per_process: int | None = None

    @property
    def main(self) -> int:
        """Threads of the main process when it computes alone."""
        return min(self.threads, self.per_process or self.threads)

    def workers(self, requested: int) -> int:
        """Worker processes to start for ``requested``: never more than the budget's threads (each runs one)."""
        return max(1, min(requested, self.threads))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(text: str | None) -> int | None:
    """The value of an ``OMP_NUM_THREADS``-like setting (``"4"``, ``"4,2"`` for nested levels), or None."""
    if not text:
        return None
    try:
        value = int(text.split(",")[0].strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _cgroup_paths() -> list[Path]:
    """This process's cgroup directories (v2 unified path and v1 cpu controller), most specific first."""
    paths = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        rel = rel.lstrip("/")
        if controllers == "":  # v2
            paths.append(CGROUP_ROOT / rel)
        elif "cpu" in controllers.split(","):
            for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                paths.append(CGROUP_ROOT / name / rel)
                paths.append(CGROUP_ROOT / name)
    paths.append(CGROUP_ROOT)
    return paths


def quota_cores(paths: list[Path] | None = None) -> int | None:
    """Cores a cgroup CPU quota allows (rounded up), or None when there is no quota."""
    for d in paths if paths is not None else _cgroup_paths():
        try:
            text = (d / "cpu.max").read_text().split()
        except OSError:
            text = []
        if len(text) == 2:
            if text[0] == "max":
                continue  # no limit here; a parent cgroup may still have one
            try:
                quota, period = int(text[0]), int(text[1])
            except ValueError:
                continue
            if quota > 0 and period > 0:
                return max(1, math.ceil(quota / period))
        try:
            quota = int((d / "cpu.cfs_quota_us").read_text())
            period = int((d / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    return None


def available_cores() -> tuple[int, str]:
    """Cores this process may use, and what limited them (CPU count, affinity mask or cgroup quota)."""
    cores, reason = os.cpu_count() or 1, "CPU count"
    if hasattr(os, "sched_getaffinity"):
        try:
            affinity = len(os.sched_getaffinity(0))
        except OSError:
            affinity = cores
        if 0 < affinity < cores:
            cores, reason = affinity, "CPU affinity"
    quota = quota_cores()
    if quota is not None and quota < cores:
        cores, reason = quota, "cgroup CPU quota"
    return cores, reason


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def decide(setting: int | str | None = "auto", environ: dict[str, str] | None = None,
           load: float | None = None) -> Budget:
    """The budget for ``[study] threads`` = ``setting`` (``"auto"``/None or a positive number).

    ``auto`` also looks at the 1-minute load average (``load``, read when not given): cores that other jobs keep
    busy are left to them, so the main process runs ``cores - round(load)`` threads (at least one).
    """
    env = os.environ if environ is None else environ
    cores, reason = available_cores()
    omp = _positive_int(env.get("OMP_NUM_THREADS"))
    cap = omp if omp is not None and omp < cores else None
    note = f"; OMP_NUM_THREADS={omp} per process" if cap else ""
    busy = int((_load() if load is None else load) + 0.5)
    if setting in (None, "auto") and busy > 0 and cores - busy < (cap or cores):
        cap = max(1, cores - busy)
        note += f"; {cap} per process while other jobs keep {min(busy, cores)} busy (load average)"
    if setting not in (None, "auto"):
        asked = int(setting)
        if asked < 1:
            raise ValueError(f"threads must be 'auto' or a positive integer, not {setting!r}")
        if asked > cores:
            return Budget(cores, cores, f"threads = {asked} capped at the {cores} cores available ({reason})", None)
        return Budget(asked, cores, f"threads = {asked}", None)
    return Budget(cores, cores, f"{cores} cores ({reason}){note}", cap)


_current: Budget | None = None


def current() -> Budget:
    """The budget :func:`configure` chose for this run (automatic until something configured one)."""
    global _current
    if _current is None:
        _current = decide("auto")
    return _current


def configure(setting: int | str | None = "auto") -> Budget:
    """Choose the budget for this process and apply it to torch (intra-op threads; inter-op where still possible).

    Worker pools read it through :func:`current` (``Budget.workers``).
    """
    global _current
    _current = decide(setting)
    set_torch_threads(_current.main)
    return _current


def set_torch_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``, and the inter-op pool too unless torch already started it."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        if torch.get_num_interop_threads() > threads:
            torch.set_num_interop_threads(threads)
    except RuntimeError:  # inter-op work already ran in this process: the pool's size is fixed now
        pass


def prefer_passive_waits() -> None:
    """Let idle OpenMP threads sleep instead of spinning (only effective before torch's first import)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


__all__ = ["Budget", "available_cores", "quota_cores", "decide", "configure", "current", "set_torch_threads",
           "prefer_passive_waits"]
