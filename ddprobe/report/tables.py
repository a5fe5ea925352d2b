"""Shape flat metrics for display: ``set/model`` keys become a matrix, the rest a list."""

from __future__ import annotations


def metric_matrix(metrics: dict[str, float]):
    """(row names, column names, {(row, col): value}, leftover metrics) for keys of the form ``row/col``."""
    two = {k: v for k, v in metrics.items() if k.count("/") == 1}
    rest = {k: v for k, v in metrics.items() if k not in two}
    rows: list[str] = []
    cols: list[str] = []
    cells = {}
    for k, v in two.items():
        r, c = k.split("/")
        if r not in rows:
            rows.append(r)
        if c not in cols:
            cols.append(c)
        cells[(r, c)] = v
    if len(cols) > 12:  # not a matrix worth drawing
        return [], [], {}, metrics
    return rows, cols, cells, rest
