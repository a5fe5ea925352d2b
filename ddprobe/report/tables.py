"""Shape flat metrics for display: keys ``a/b/c`` become matrices (rows ``a/b``, columns ``c``)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

MAX_COLUMNS = 12


@dataclass
class Matrix:
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    cells: dict[tuple[str, str], float] = field(default_factory=dict)


REFERENCE_ROWS = ("real", "real_test")


def metric_matrices(metrics: dict[str, float], sets: Collection[str] | None = None
                    ) -> tuple[list[Matrix], dict[str, float]]:
    """Group keys by their number of ``/`` parts; each group with few enough columns becomes a matrix.

    With ``sets`` (the study's distilled set names), only keys that start with a set or with real data
    (``real``, ``real_test``) become matrix rows; others (a probe's cost counters such as ``products/total``)
    stay in the list, so a table of sets never mixes in a row that is no set.
    Returns the matrices (in order of first appearance) and the metrics that fit none (shown as a list).
    """
    groups: dict[int, Matrix] = {}
    allowed = None if sets is None else {*sets, *REFERENCE_ROWS}
    for key, value in metrics.items():
        parts = key.split("/")
        if len(parts) < 2 or (allowed is not None and parts[0] not in allowed):
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
