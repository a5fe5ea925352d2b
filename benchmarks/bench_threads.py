"""Cold runs quiet and beside busy loops, with torch's default threads and with ddprobe's thread budget.

    .venv/bin/python benchmarks/bench_threads.py --what dm --code /path/to/old/checkout --label before
    .venv/bin/python benchmarks/bench_threads.py --what dm --label after
    .venv/bin/python benchmarks/bench_threads.py --what study --spec specs/study.toml --cap 240 --busy 0 2

Each case runs ``ddprobe distill`` (``--what dm``: the DM set of specs/study.toml alone, control off) or
``ddprobe run`` (``--what study``) in a fresh process with a fresh cache, optionally beside ``--busy`` CPU-bound
loops (``python -c 'while 1: pass'``, each bounded by ``timeout``), and stops it after ``--cap`` seconds. The
environment is the caller's without OMP_NUM_THREADS / MKL_NUM_THREADS unless ``--env`` sets them, so torch picks
its own default the way a new user's shell would. Prints one markdown row per case with the load average seen
just before it started (``os.getloadavg``, which includes other users' jobs on a shared machine).
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

DM_SPEC = """
[study]
name = "bench-dm"
seed = 0
device = "cpu"
control = false
cache_dir = "cache"

[data]
dataset = "digits"

[models]
convnet = { arch = "convnet", width = 32, depth = 2 }

[distilled.dm]
distiller = "dm"
ipc = 1
model = "convnet"
iterations = 100
batch_real = 64
"""


def busy_loops(count: int, seconds: float) -> list[subprocess.Popen]:
    """``count`` CPU-bound loops, each in its own process group (stopped with :func:`stop`) and bounded by timeout."""
    return [subprocess.Popen(["timeout", str(int(seconds) + 5), sys.executable, "-c", "while 1: pass"],
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(count)]


def stop(loops: list[subprocess.Popen]) -> None:
    for p in loops:
        os.killpg(p.pid, signal.SIGTERM)  # the loop and the timeout around it
        p.wait()


def run_case(what: str, spec: Path | None, code: Path, busy: int, cap: float, env_extra: dict[str, str],
             args: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-threads-"))
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(code)
    env["DDPROBE_CACHE_DIR"] = str(work / "cache")
    if what == "dm":
        (work / "study.toml").write_text(DM_SPEC)
        cmd = [sys.executable, "-m", "ddprobe", "distill", "study.toml", "-o", "out", *args]
    else:
        text = Path(spec).read_text()  # type: ignore[arg-type]
        (work / "study.toml").write_text(text)
        cmd = [sys.executable, "-m", "ddprobe", "run", "study.toml", "--quiet", "-o", "out", *args]
    load = os.getloadavg()[0]
    loops = busy_loops(busy, cap)
    time.sleep(0.5 if busy else 0)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: on timeout its workers go too
    try:
        output, _ = proc.communicate(timeout=cap)
        wall, rc, tail = time.perf_counter() - start, proc.returncode, output[-400:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        wall, rc, tail = None, None, "timed out"
    finally:
        stop(loops)
    out = {"what": what, "busy": busy, "env": env_extra, "args": args, "load": round(load, 2), "wall": wall,
           "rc": rc}
    manifest = work / "out" / "dm.json"
    if what == "dm" and manifest.exists():
        out["distill_seconds"] = json.loads(manifest.read_text()).get("seconds")
    if rc not in (0, 1):
        out["tail"] = tail
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["dm", "study"], default="dm")
    ap.add_argument("--spec", type=Path, default=REPO / "specs" / "study.toml")
    ap.add_argument("--code", type=Path, default=REPO, help="checkout whose ddprobe runs (PYTHONPATH)")
    ap.add_argument("--label", default="")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--cap", type=float, default=240.0, help="stop a case after this many seconds")
    ap.add_argument("--env", nargs="*", default=[], help="KEY=VALUE added to the case's environment")
    ap.add_argument("--args", nargs="*", default=[], help="extra ddprobe arguments, e.g. --args=--threads=1")
    opts = ap.parse_args()
    env_extra = dict(kv.split("=", 1) for kv in opts.env)
    for busy in opts.busy:
        row = run_case(opts.what, opts.spec, opts.code, busy, opts.cap, env_extra, opts.args)
        wall = f"{row['wall']:.1f}" if row["wall"] is not None else f"> {opts.cap:.0f} (stopped)"
        extra = f" | distill {row['distill_seconds']:.1f} s" if row.get("distill_seconds") else ""
        print(f"| {opts.label} | {opts.what} | {busy} busy | load {row['load']} | "
              f"{' '.join(opts.env + opts.args) or 'defaults'} | {wall} s | rc {row['rc']}{extra} |", flush=True)
        if "tail" in row:
            print(row["tail"], file=sys.stderr)


if __name__ == "__main__":
    main()
