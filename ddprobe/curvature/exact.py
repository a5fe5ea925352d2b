"""The exact diagonal and trace from diagonal-block products, and a prediction of their cost."""

from __future__ import annotations

import math

import torch

from ..timing import timed
from .operators import CurvatureOperator
from .trace import TraceEstimate


def _blocks(op: CurvatureOperator) -> list[int]:
    """Sizes of the diagonal blocks ``block_matmat`` takes (one per parameter), or one block for other operators."""
    return list(op.numels) if hasattr(op, "block_matmat") else [op.size]


def _unit_block_products(op: CurvatureOperator, index: int, rows: torch.Tensor) -> torch.Tensor:
    if hasattr(op, "block_matmat"):
        return op.block_matmat(index, rows)
    return op.matmat(rows)


def diagonal(op: CurvatureOperator, *, block: int = 64) -> torch.Tensor:
    """The exact diagonal of the operator's matrix: products with unit vectors, one parameter's block at a time.

    For a :class:`HessianOperator` each product is with a diagonal block only (``block_matmat``), which is much
    cheaper than a full product for all but the first layers; ``size`` products in all (``block`` rows per call).
    """
    out = []
    for index, numel in enumerate(_blocks(op)):
        for s in range(0, numel, block):
            m = min(block, numel - s)
            eye = torch.zeros(m, numel, device=op.device, dtype=op.dtype)
            eye.diagonal(s).fill_(1)  # rows e_s ... e_{s+m-1}
            out.append(_unit_block_products(op, index, eye).diagonal(s))
    return torch.cat(out)


def exact_trace(op: CurvatureOperator, *, block: int = 64) -> TraceEstimate:
    """tr(A) exactly (up to floating point) as the sum of :func:`diagonal`: ``size`` products, standard error 0.

    Cheaper than a stochastic estimate when that would need more products than the model has parameters, or when
    most parameters sit in late layers (their block products are cheap): :func:`auto_trace` decides by timing.
    """
    diag = diagonal(op, block=block)
    return TraceEstimate(float(diag.double().sum()), 0.0, op.size, "exact[diagonal]", True,
                         diag.double().cpu().numpy(), 0.0, None)


def exact_trace_seconds(op: CurvatureOperator, limit: float = math.inf) -> float:
    """Predicted seconds for :func:`exact_trace`: one timed product per block, times the block's size.

    Blocks are timed in parameter order (the first layers' blocks cost the most) and the sum is returned as soon as it
    passes ``limit``: a lower bound is enough to reject the exact route. Costs the products it times.
    """
    total = 0.0
    for index, numel in enumerate(_blocks(op)):
        v = torch.ones(1, numel, device=op.device, dtype=op.dtype)
        total += timed(lambda: _unit_block_products(op, index, v), op.device) * numel  # noqa: B023 (called at once)
        if total > limit:
            break
    return total
