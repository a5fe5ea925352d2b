"""``auto_trace``: the stochastic or the exact trace, whichever is predicted to be faster."""

from __future__ import annotations

import dataclasses

import torch

from .exact import _blocks, exact_trace, exact_trace_seconds
from .operators import HessianOperator
from .trace import Deflation, TraceEstimate, hutchpp, minibatch_trace


def auto_trace(
    op: HessianOperator,
    *,
    rtol: float = 0.02,
    max_products: int = 1000,
    generator: torch.Generator | None = None,
    minibatch_size: int = 256,
    allow_exact: bool = True,
    deflate: Deflation | None = None,
) -> TraceEstimate:
    """The trace to relative standard error ``rtol`` by whichever route is predicted to be fastest.

    The stochastic route is :func:`minibatch_trace` (``minibatch_size`` examples a round) for data of at least
    4 x ``minibatch_size`` examples, else :func:`hutchpp`. Once it has its minimum number of samples, their spread
    and the time per sample predict its seconds to ``rtol``; if :func:`exact_trace` fits the products left and
    :func:`exact_trace_seconds` predicts less, the stochastic estimate is abandoned and the exact trace computed
    instead (its ``products`` then include the abandoned ones and the timing products). That happens where the trace
    nearly cancels between positive and negative curvature (at initialization: thousands of probes for a 2 % error
    on the benchmark ConvNet, against ~1000 cheap block products for the exact value).

    The estimators' ``abandon(seconds_left, products_used)`` hook is how: each calls it once, when it has its minimum
    number of samples, and stops there (unconverged) if it returns True. ``deflate`` goes to the stochastic route
    (Hutch++ then needs no sketch).
    """
    before = op.products
    switched = False

    def abandon(stochastic_seconds: float, used: int) -> bool:
        nonlocal switched
        spent = used + len(_blocks(op))  # the pilot's products, and one timed product per block
        if allow_exact and op.size <= max_products - spent:
            switched = exact_trace_seconds(op, limit=stochastic_seconds) < stochastic_seconds
        return switched

    minibatches = op.num_examples >= 4 * minibatch_size
    if minibatches:
        pilot = minibatch_trace(op.model, (op.images, op.labels), batch_size=minibatch_size, probes_per_batch=2,
                                rtol=rtol, max_products=max_products, generator=generator, loss=op.loss,
                                kind=op.kind, bn=op.bn, abandon=abandon, deflate=deflate)
    else:
        pilot = hutchpp(op, rtol=rtol, max_products=max_products, generator=generator,
                        sketch=max(1, min(10, max_products // 4)), abandon=abandon, deflate=deflate)
    exact = exact_trace(op) if switched else None
    # products on ``op`` (Hutch++'s, the timing ones, the exact trace's) and the minibatch pilot's own
    spent = op.products - before + (pilot.products if minibatches else 0)
    if exact is None:
        return dataclasses.replace(pilot, products=spent)
    return dataclasses.replace(exact, products=spent, rtol=rtol,
                               method=f"exact[diagonal; {pilot.method} abandoned after {pilot.products} products]")
