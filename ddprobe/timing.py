"""Wall-clock timing of work that may run asynchronously on a CUDA device."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def timed(fn: Callable[[], Any], device: Any) -> float:
    """Seconds ``fn()`` takes on ``device``: on CUDA, work queued before it is finished first and its own is waited
    for, so the time is the kernels' and not just their launch."""
    import torch

    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start
