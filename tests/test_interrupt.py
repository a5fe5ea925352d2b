"""Ctrl-C (SIGINT) or SIGTERM stops `ddprobe run` at once, workers included, with a partial report and exit 130."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

PLUGIN = '''
import os
import time
from pathlib import Path

from pydantic import BaseModel
from ddprobe import ProbeResult, hookimpl


class Quick:
    name = "quick"
    description = "finishes at once"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        return ProbeResult({"answer": 42.0})


class Sleepy:
    name = "sleepy"
    description = "four long sleeps in the study's worker processes"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        seconds = float(os.environ.get("SLEEPY_SECONDS", "600"))
        Path("started").write_text(str(os.getpid()))
        ctx.map(time.sleep, [seconds] * 4, "sleeping")
        return ProbeResult({"slept": seconds})


@hookimpl
def register_probes(register):
    register(Quick())
    register(Sleepy())
'''

SPEC = """
[study]
name = "interrupt"
device = "cpu"
control = false
cache_dir = "cache"
workers = 2
plugins = ["sleepy.py"]

[data]
dataset = "digits"
train_per_class = 5

[[probe]]
kind = "quick"

[[probe]]
kind = "sleepy"

[report]
formats = ["json", "markdown"]
"""


def start(tmp_path: Path, **env: str) -> subprocess.Popen:
    (tmp_path / "sleepy.py").write_text(PLUGIN)
    (tmp_path / "study.toml").write_text(SPEC)
    full = {**os.environ, "OMP_NUM_THREADS": "1", "DDPROBE_CACHE_DIR": str(tmp_path / "cache"), **env}
    return subprocess.Popen([sys.executable, "-m", "ddprobe", "run", "study.toml", "--quiet", "-o", "out"],
                            cwd=tmp_path, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: the test can see leftover workers


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_with_a_partial_report_and_the_rerun_resumes(tmp_path, sig):
    proc = start(tmp_path)
    try:
        while not (tmp_path / "started").exists():  # the sleepy probe is about to hand its items to the workers
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        time.sleep(1.0)
        proc.send_signal(sig)  # to the main process only, like `kill -INT <pid>` or `timeout`
        # A hang guard, not a speed check: waiting for the queued work would take 4 x 600 s / 2 workers.
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert stderr.count("\n") <= 3 and "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:  # terminated workers may take a moment to go
        time.sleep(0.2)
    assert not group_alive(proc.pid), "worker processes outlived the run"

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["interrupted"] is True and report["exit_code"] == 130
    assert [(p["id"], p["status"]) for p in report["probes"]] == [("quick", "ok"), ("sleepy", "interrupted")]
    assert report["probes"][0]["metrics"] == {"answer": 42.0}
    assert "rerun the same command to resume" in report["probes"][1]["error"]
    assert "interrupted" in (tmp_path / "out" / "report.md").read_text()
    if sig != signal.SIGINT:
        return
    rerun = start(tmp_path, SLEEPY_SECONDS="0")
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stdout + stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [(p["id"], p["status"], p["cached"]) for p in report["probes"]] == [
        ("quick", "ok", True), ("sleepy", "ok", False)]
    assert report["interrupted"] is False


DISTILLER = """
from pydantic import BaseModel
from ddprobe import hookimpl


class Stops:
    name = "stops"
    description = "Ctrl-C arrives while it distills"

    class Options(BaseModel):
        pass

    def distill(self, real, ipc, options, ctx):
        import os
        import signal
        import time

        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        time.sleep(5)
        raise AssertionError("no KeyboardInterrupt after SIGINT")


@hookimpl
def register_distillers(register):
    register(Stops())
"""


def test_interrupted_while_distilling_reports_the_sets_made_so_far(tmp_path):
    from ddprobe.study import run_study

    (tmp_path / "stops.py").write_text(DISTILLER)
    (tmp_path / "s.toml").write_text('[study]\ndevice = "cpu"\ncontrol = false\ncache_dir = "c"\n'
                                     'plugins = ["stops.py"]\n[data]\ntrain_per_class = 5\n'
                                     '[distilled.r]\ndistiller = "random"\nipc = 1\n'
                                     '[distilled.x]\ndistiller = "stops"\nipc = 1\n'
                                     '[[probe]]\nkind = "pixels"\n[report]\nformats = ["json"]\n')
    results = run_study(tmp_path / "s.toml", tmp_path / "out")
    assert results.interrupted and results.exit_code == 130 and results.probes == []
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {n: d["status"] for n, d in report["distilled"].items()} == {"r": "ok", "x": "interrupted"}
    assert report["exit_code"] == 130
