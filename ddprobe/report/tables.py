"""Shape flat metrics for display: keys ``a/b/c`` become matrices (rows ``a/b``, columns ``c``)."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_COLUMNS = 12


@dataclass
class Matrix:
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], float] = field(default_factory=dict)


def metric_matrices(metrics: dict[str, float]) -> tuple[list[Matrix], dict[str, float]]:
    """Group keys by their number of ``/`` parts; each group with few enough columns becomes a matrix.

    Returns the matrices (in order of first appearance) and the metrics that fit none (shown as a list).
    """
    groups: dict[int, Matrix] = {}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) < 2:
            continue
        m = groups.setdefault(len(parts), Matrix())
        row, col = "/".join(parts[:-1]), parts[-1]
        if row not in m.rows:
            m.rows.append(row)
        if col not in m.cols:
            m.cols.append(col)
        m.cells[(row, col)] = value
    matrices = [m for m in groups.values() if len(m.cols) <= MAX_COLUMNS and len(m.rows) > 1]
    shown = {f"{r}/{c}" for m in matrices for (r, c) in m.cells}
    rest = {k: v for k, v in metrics.items() if k not in shown}
    return matrices, rest
