"""The thread budget: cores from affinity and cgroup quotas, OMP_NUM_THREADS, [study] threads, worker splits."""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from ddprobe import threads
from ddprobe.cli import app
from ddprobe.executor import make_executor, process_map


def fake_cores(monkeypatch, cpus: int, affinity: int | None = None, quota: int | None = None) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity or cpus)), raising=False)
    monkeypatch.setattr(threads, "quota_cores", lambda paths=None: quota)


def test_cores_are_the_smallest_of_cpu_count_affinity_and_cgroup_quota(monkeypatch):
    fake_cores(monkeypatch, 16)
    assert threads.available_cores() == (16, "CPU count")
    fake_cores(monkeypatch, 16, affinity=4)
    assert threads.available_cores() == (4, "CPU affinity")
    fake_cores(monkeypatch, 16, affinity=4, quota=2)
    assert threads.available_cores() == (2, "cgroup CPU quota")


def test_cgroup_quotas_v2_and_v1(tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cpu.max").write_text("150000 100000\n")  # docker --cpus 1.5
    assert threads.quota_cores([v2]) == 2
    (v2 / "cpu.max").write_text("max 100000\n")  # no limit here: look further up
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "cpu.max").write_text("300000 100000\n")
    assert threads.quota_cores([v2, parent]) == 3
    assert threads.quota_cores([v2]) is None
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.quota_cores([v1]) == 1
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # v1's "no limit"
    assert threads.quota_cores([v1]) is None


def test_auto_uses_every_core_and_omp_num_threads_caps_each_process(monkeypatch):
    fake_cores(monkeypatch, 2)
    budget = threads.decide("auto", environ={}, load=0.0)
    assert (budget.threads, budget.main, budget.workers(2), budget.workers(4)) == (2, 2, 2, 2)
    budget = threads.decide("auto", environ={"OMP_NUM_THREADS": "1"}, load=0.0)
    assert (budget.threads, budget.main, budget.workers(2)) == (2, 1, 2)  # one thread per process, 2 processes
    assert "OMP_NUM_THREADS=1" in budget.reason
    fake_cores(monkeypatch, 8)
    budget = threads.decide("auto", environ={"OMP_NUM_THREADS": "2"}, load=0.0)
    assert (budget.threads, budget.main) == (8, 2)  # 8 cores to share, OMP_NUM_THREADS says 2 per process
    assert threads.decide(None, environ={"OMP_NUM_THREADS": "junk"}, load=0.0).threads == 8


def test_auto_leaves_the_cores_other_jobs_keep_busy(monkeypatch):
    fake_cores(monkeypatch, 2)
    assert threads.decide("auto", environ={}, load=0.3).main == 2  # quiet
    busy = threads.decide("auto", environ={}, load=1.7)
    assert (busy.threads, busy.main, busy.workers(2)) == (2, 1, 2) and "load average" in busy.reason
    assert threads.decide("auto", environ={}, load=9.0).main == 1
    fake_cores(monkeypatch, 8)
    assert threads.decide("auto", environ={"OMP_NUM_THREADS": "2"}, load=3.2).main == 2
    assert threads.decide("auto", environ={}, load=3.2).main == 5
    assert threads.decide(4, environ={}, load=9.0).main == 4  # an explicit number is taken as it is


def test_explicit_threads_are_capped_at_the_cores_and_cap_the_workers(monkeypatch):
    fake_cores(monkeypatch, 4)
    budget = threads.decide(3, environ={"OMP_NUM_THREADS": "1"})  # explicit wins over the environment
    assert (budget.threads, budget.main, budget.workers(3), budget.workers(5)) == (3, 3, 3, 3)
    budget = threads.decide(64, environ={})
    assert budget.threads == 4 and "capped" in budget.reason
    assert budget.workers(8) == 4  # never more worker processes than threads
    with pytest.raises(ValueError):
        threads.decide(0)


def _worker_threads(shared, item):
    return torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")


def test_workers_run_one_thread_each_never_more_of_them_than_the_budget(monkeypatch):
    fake_cores(monkeypatch, 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "_load", lambda: 0.0)
        budget = threads.configure("auto")
        assert torch.get_num_threads() == budget.main == 2
        assert process_map(_worker_threads, range(4), workers=2) == [(1, "1")] * 4
        assert make_executor("processes", 8).workers == 2
        threads.configure(1)
        assert make_executor("processes", 2).name == "serial"
        # a budget of one thread: no worker processes, the items run in this process with its one thread
        assert process_map(_worker_threads, range(2), workers=2) == [(1, None)] * 2
    finally:
        threads.set_torch_threads(before)
        threads._current = None


def test_run_threads_option_is_checked(tmp_path):
    result = CliRunner().invoke(app, ["run", "specs/ci-gate.toml", "--threads", "two"])
    assert result.exit_code == 2
    assert "--threads two: expected 'auto' or a positive integer" in result.output
