"""Curvature of a model's loss: Hessian- and Gauss-Newton-vector products, trace, top eigenpairs, spectral density.

Usable on its own::

    from ddprobe.curvature import HessianOperator, hutchpp, lanczos, spectral_density

    op = HessianOperator(model, (images, labels))          # full batch, BatchNorm in eval mode
    est = hutchpp(op, rtol=0.02, generator=torch.Generator().manual_seed(0))
    print(est.value, est.stderr, est.products)
    top = lanczos(op, k=5, generator=torch.Generator().manual_seed(0))
    print(top.eigenvalues, top.residuals, top.converged)

Modules: ``operators`` (HessianOperator, MatrixOperator, dense_matrix, preserved_state), ``trace`` (Hutchinson,
Hutch++, minibatch, Deflation), ``exact`` (diagonal, exact_trace), ``auto`` (auto_trace), ``eigen`` (lanczos,
subspace_overlap), ``density`` (spectral_density); everything is importable from ``ddprobe.curvature``.

The operator acts on the model's trainable parameters flattened into one vector (in ``model.parameters()``
order). Every product is exact up to floating point: no finite differences.

**Side effects.** None. Products use ``torch.autograd.grad`` (never ``.backward``), so ``.grad`` is never
written; each module's train/eval flag is restored after every forward pass; under ``bn="batch"`` the BatchNorm
running statistics are restored too. ``.grad`` tensors are nevertheless snapshotted and re-set as a guard.

**BatchNorm policy** (``bn``): ``"eval"`` (default) evaluates the loss with every module in eval mode: BatchNorm
uses its running statistics, dropout is off, and the loss is a plain average of per-example losses, so
accumulating over batches or subsampling gives exactly the Hessian of the stated loss. This is also what the
paper's PyHessian run did (its constructor calls ``model.eval()``). ``"batch"`` evaluates in train mode (BatchNorm
normalizes with the statistics of the batch): the loss then couples the examples of a batch, so it is only
allowed when the data forms one batch; running statistics are restored afterwards.

**Formulation** (measured on the 2-core CPU, ConvNet on digits, see docs/curvature.md): the gradient graph is
built once (``create_graph=True``) and kept; each product is one extra backward through it. Products are issued
as ``is_grads_batched`` blocks on CUDA, and on CPU when a chunk holds at most ``BATCHED_MAX_EXAMPLES`` examples
(a distilled set, a minibatch: per-product overheads dominate there and one batched backward was 1.1-2.6x faster per
product), one vector at a time on larger CPU chunks (batched was up to 1.9x slower there, forward-over-reverse
``torch.func`` 2-5x slower); ``batched="auto"``, benchmarks/bench_hvp_blocks.py.
Data larger than ``batch_size`` is processed in chunks; chunk graphs are kept when ``retain="auto"`` and there is
one chunk, otherwise each product re-runs forward and double backward per chunk (memory bounded, like PyHessian's
dataloader mode).
"""

from __future__ import annotations

from .auto import auto_trace
from .density import SpectralDensity, spectral_density
from .eigen import EigenResult, lanczos, subspace_overlap
from .exact import diagonal, exact_trace, exact_trace_seconds
from .operators import (
    BATCHED_MAX_EXAMPLES,
    CurvatureOperator,
    HessianOperator,
    MatrixOperator,
    dense_matrix,
    preserved_state,
    rademacher,
)
from .trace import Deflation, TraceEstimate, hutchinson, hutchpp, minibatch_trace, trace

__all__ = [
    "CurvatureOperator", "HessianOperator", "MatrixOperator", "TraceEstimate", "EigenResult", "SpectralDensity",
    "hutchinson", "hutchpp", "minibatch_trace", "trace", "lanczos", "spectral_density", "rademacher", "dense_matrix",
    "subspace_overlap", "preserved_state", "diagonal", "exact_trace", "exact_trace_seconds", "auto_trace",
    "Deflation", "BATCHED_MAX_EXAMPLES",
]
