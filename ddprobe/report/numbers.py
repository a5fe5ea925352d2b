"""One way to show numbers, shared by the console, report.md, report.html and ``ddprobe compare``.

Three significant digits; integral values as integers (``38``, not ``38.000``); large values without exponent
(``5234``), tiny ones in scientific notation (``6.93e-07``); a mean over several runs as ``0.725 ± 0.012 (n=3)``
and over one run as ``0.725 (n=1)`` (no meaningless ``± 0.000``).
"""

from __future__ import annotations

import math
from typing import Any

DIGITS = 3


def fmt(v: Any, missing: str = "") -> str:
    """A number for people: see the module docstring. Non-numbers are shown with ``str``; None as ``missing``."""
    if v is None:
        return missing
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    a = abs(v)
    if a >= 10 ** DIGITS:
        return f"{v:.0f}"
    if a >= 1e-3:
        return f"{v:.{DIGITS}g}"
    return f"{v:.{DIGITS - 1}e}"


def fmt_delta(v: float | None) -> str:
    """A signed change (``+0.012``, ``-3``)."""
    if v is None:
        return ""
    s = fmt(v)
    return s if s.startswith("-") or s in ("nan", "0") else "+" + s


def fmt_mean(mean: float, std: float | None = None, n: int | None = None) -> str:
    """``mean ± std (n=N)``; with one run, just ``mean (n=1)``."""
    if (n is not None and n <= 1) or std is None:
        return fmt(mean) + (f" (n={n})" if n is not None else "")
    return f"{fmt(mean)} ± {fmt(std)}" + (f" (n={n})" if n is not None else "")


def fmt_seconds(s: float | None) -> str:
    """Durations: ``0.4 s``, ``12 s``, ``3 min 5 s``, ``1 h 02 min``."""
    if s is None:
        return ""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 model``, ``2 models`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
