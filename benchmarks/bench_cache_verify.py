"""What checking the cache costs: a verified read against an unverified one, and hashing real data per probe.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_cache_verify.py

Entries the size of a digits ConvNet (1.3 MB), a CIFAR-10 ConvNet or IPC-50 set (6.3 MB) and a large tensor entry
(50 MB) are read with ``safetensors.load_file`` alone (memory-mapped: the bytes are not even read) and with
``Cache.load_tensors`` (every file hashed against its recorded digest). Then the content hash the input guard
computes after each probe, on CIFAR-10-sized real data (50,000 + 10,000 images of 3x32x32), with and without the
copy that ``numpy().tobytes()`` used to make.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from ddprobe.cache import Cache
from ddprobe.data import content_hash


def _time(fn, reps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - start) / reps


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="ddprobe-bench-cache-"))
    cache = Cache(root, salt="bench")
    print("| entry | load_file | verified load_tensors |")
    print("|---|---|---|")
    for mb in (1.3, 6.3, 50.0):
        key = f"k{mb}"
        cache.save_tensors("bench", key, {"w": torch.randn(int(mb * 1e6 / 4))})
        path = cache.path("bench", key) / "tensors.safetensors"
        raw = _time(lambda path=path: load_file(str(path)), 20)
        verified = _time(lambda key=key: cache.load_tensors("bench", key), 20)
        print(f"| {mb} MB | {raw * 1e3:.2f} ms | {verified * 1e3:.1f} ms |")
    train, test = torch.randn(50_000, 3, 32, 32), torch.randn(10_000, 3, 32, 32)
    labels = torch.zeros(50_000, dtype=torch.long)
    guard = _time(lambda: (content_hash(train, labels), content_hash(test, labels[:10_000])), 3)
    copy = _time(lambda: hashlib.sha256(train.numpy().tobytes()).hexdigest(), 3)
    print(f"\nreal-data hash after each probe (CIFAR-10 size, train + test): {guard:.2f} s; "
          f"the train split alone through tobytes(): {copy:.2f} s")


if __name__ == "__main__":
    main()
