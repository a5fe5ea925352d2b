"""The ``hessian`` probe with its checkpoints measured in the training process vs in ``[study] workers`` processes.

    .venv/bin/python benchmarks/bench_hessian_workers.py --workers 2

Runs ``ddprobe run`` on the same spec (digits, ConvNet width 32 depth 2, the paper's real-data run shortened to 60
steps, a checkpoint every 2 steps, full real data plus a random-real set of 10 per class, ``estimator = "auto"``)
once per worker count, each with a fresh cache and ``OMP_NUM_THREADS=1``, one after the other, and prints the
probe's seconds and whether the metrics are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

SPEC = """
[study]
name = "hessian-workers-{w}"
seed = 0
device = "cpu"
workers = {w}
cache_dir = "cache-{w}"

[data]
dataset = "digits"

[models]
convnet = {{ arch = "convnet", width = 32, depth = 2 }}

[distilled.rand]
distiller = "random"
ipc = 10

[[probe]]
kind = "hessian"
recipe = {{ steps = {steps} }}
checkpoints = 2
rtol = 0.05

[report]
formats = ["json"]
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    ddprobe = Path(sys.executable).with_name("ddprobe")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for w in args.workers:
            spec = Path(tmp) / f"w{w}.toml"
            spec.write_text(SPEC.format(w=w, steps=args.steps))
            out = Path(tmp) / f"run{w}"
            subprocess.run([str(ddprobe), "run", str(spec), "--output", str(out)], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
            probe = json.loads((out / "report.json").read_text())["probes"][0]
            results[w] = (probe["info"]["seconds"], probe["metrics"])
    base = results[args.workers[0]]
    print("| workers | probe seconds | speed-up | metrics identical |")
    print("|---:|---:|---:|---|")
    for w, (seconds, metrics) in results.items():
        print(f"| {w} | {seconds:.1f} | {base[0] / seconds:.2f}x | {metrics == base[1]} |")


if __name__ == "__main__":
    main()
