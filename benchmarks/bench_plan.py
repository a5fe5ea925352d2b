"""`ddprobe plan` against the cold run it predicts: the estimate, its range, how long plan took, and the actual run.

    .venv/bin/python benchmarks/bench_plan.py specs/ci-gate.toml specs/study.toml --cap 300

For each spec, in a fresh cache: ``ddprobe plan SPEC --json`` (timed; its estimate for one process and, with
``[study] workers``, the one with bags spread over the workers), then ``ddprobe run SPEC --quiet`` (timed,
stopped after ``--cap`` seconds). Prints one markdown row per spec with the load average seen before each step
(``os.getloadavg``: on a shared machine it includes other users' jobs, which the plan cannot foresee).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed_run(cmd: list[str], cwd: Path, env: dict[str, str], cap: float) -> tuple[float | None, str]:
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    start = time.perf_counter()
    try:
        out, err = proc.communicate(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None, ""
    if proc.returncode not in (0, 1):
        print(err[-1000:], file=sys.stderr)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("specs", nargs="+", type=Path)
    ap.add_argument("--cap", type=float, default=300.0, help="stop a run after this many seconds")
    opts = ap.parse_args()
    print("| spec | load before plan | plan took (s) | estimate (s) | range (s) | with [study] workers (s) |"
          " load before run | cold run (s) | actual / estimate | actual / with workers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for spec in opts.specs:
        work = Path(tempfile.mkdtemp(prefix="bench-plan-"))
        (work / "study.toml").write_text(spec.read_text())
        env = {**os.environ, "DDPROBE_CACHE_DIR": str(work / "cache"), "PYTHONPATH": str(REPO)}
        load_plan = os.getloadavg()[0]
        took, out = timed_run([sys.executable, "-m", "ddprobe", "plan", "study.toml", "--json"], work, env, opts.cap)
        plan = json.loads(out)
        load_run = os.getloadavg()[0]
        actual, _ = timed_run([sys.executable, "-m", "ddprobe", "run", "study.toml", "--quiet", "-o", "out"], work,
                              env, opts.cap)
        ratio = f"{actual / plan['seconds']:.2f}" if actual and plan["seconds"] else "-"
        with_workers = plan.get("seconds_with_workers") or plan["seconds"]
        ratio_w = f"{actual / with_workers:.2f}" if actual and with_workers else "-"
        shown = f"{actual:.1f}" if actual else f"> {opts.cap:.0f} (stopped)"
        print(f"| {spec} | {load_plan:.1f} | {took:.1f} | {plan['seconds']:.1f} | {plan['low']:.1f} - "
              f"{plan['high']:.1f} | {with_workers:.1f} ({plan.get('workers', 1)}) | {load_run:.1f} | {shown} | "
              f"{ratio} | {ratio_w} |", flush=True)


if __name__ == "__main__":
    main()
