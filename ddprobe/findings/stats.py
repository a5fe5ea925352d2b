"""The interval estimates behind verdicts: Student-t for a mean of independent runs, a percentile bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

LEVEL = 0.95


def _clean(values: Sequence[float]) -> np.ndarray:
    import numpy as np

    arr = np.asarray([float(v) for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def _mean(values: Sequence[float]) -> tuple[np.ndarray, float, int]:
    """The finite values, their mean (NaN when there are none) and their number."""
    arr = _clean(values)
    return arr, float(arr.mean()) if arr.size else math.nan, int(arr.size)


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, tuple[float, float] | None, int]:
    """Mean of independent runs and its two-sided Student-t interval: ``(mean, (lo, hi) or None, n)``.

    With one value there is no interval (None); identical values give a zero-width interval.
    """
    arr, mean, n = _mean(values)
    if n < 2:
        return mean, None, n
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * arr.std(ddof=1) / math.sqrt(n))
    return mean, (mean - half, mean + half), n


def bootstrap_ci(values: Sequence[float], level: float = LEVEL, resamples: int = 4000,
                 seed: int = 0) -> tuple[float, tuple[float, float] | None, int]:
    """Mean and percentile-bootstrap interval (for many units whose distribution is far from normal)."""
    arr, mean, n = _mean(values)
    if n < 2:
        return mean, None, n
    import numpy as np

    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return mean, (float(lo), float(hi)), n


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a[i] - b[i]`` for runs paired by index (same seed, same initialization)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs differ in number: {len(a)} vs {len(b)}")
    return [float(x) - float(y) for x, y in zip(a, b, strict=True)]
