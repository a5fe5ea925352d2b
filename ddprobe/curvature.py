"""Curvature of a model's loss: Hessian- and Gauss-Newton-vector products, trace, top eigenpairs, spectral density.

Usable on its own::

    from ddprobe.curvature import HessianOperator, hutchpp, lanczos, spectral_density

    op = HessianOperator(model, (images, labels))          # full batch, BatchNorm in eval mode
    est = hutchpp(op, rtol=0.02, generator=torch.Generator().manual_seed(0))
    print(est.value, est.stderr, est.products)
    top = lanczos(op, k=5, generator=torch.Generator().manual_seed(0))
    print(top.eigenvalues, top.residuals, top.converged)

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

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from torch import nn

from .nets import batchnorm_layers

__all__ = [
    "CurvatureOperator", "HessianOperator", "MatrixOperator", "TraceEstimate", "EigenResult", "SpectralDensity",
    "hutchinson", "hutchpp", "minibatch_trace", "trace", "lanczos", "spectral_density", "rademacher", "dense_matrix",
    "subspace_overlap", "preserved_state", "diagonal", "exact_trace", "exact_trace_seconds", "auto_trace",
    "Deflation",
]


class CurvatureOperator(Protocol):
    """A symmetric linear operator on flat vectors of length ``size``; ``matmat`` takes and returns ``[b, size]``."""

    size: int
    device: torch.device
    dtype: torch.dtype
    products: int

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor: ...


def rademacher(count: int, size: int, generator: torch.Generator | None, device: Any = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` Rademacher (+1/-1) vectors of length ``size``, drawn on CPU from ``generator`` (device independent)."""
    bits = torch.randint(0, 2, (count, size), generator=generator, dtype=torch.int8)
    return (bits.to(dtype) * 2 - 1).to(device)


def _normal(count: int, size: int, generator: torch.Generator | None, device: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(count, size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------- state guard
@contextlib.contextmanager
def preserved_state(model: nn.Module, restore_buffers: bool = False) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's ``.grad`` on exit.

    With ``restore_buffers``, the block runs on clones of all buffers (BatchNorm running statistics may be
    updated by a train-mode forward) and the original buffer tensors are put back untouched afterwards; the clones
    stay referenced by any graph built in the block, so that graph stays valid.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = []
    if restore_buffers:
        for m in model.modules():
            for name, b in list(m._buffers.items()):
                if b is not None:
                    buffers.append((m, name, b))
                    m._buffers[name] = b.detach().clone()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)
        for p, g in grads:
            p.grad = g
        for m, name, b in buffers:
            m._buffers[name] = b


# ------------------------------------------------------------------------------------------------------ operators
class MatrixOperator:
    """An explicit symmetric matrix as a curvature operator (tests, and small problems)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.size = int(matrix.shape[0])
        self.device = matrix.device
        self.dtype = matrix.dtype
        self.products = 0

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        self.products += int(vectors.shape[0])
        return vectors.to(self.dtype) @ self.matrix


LossFn = Callable[..., torch.Tensor]
BATCHED_MAX_EXAMPLES = 128  # CPU: batched blocks of products up to this chunk size (benchmarks/bench_hvp_blocks.py)


def _default_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    from .training import loss_fn

    return loss_fn(logits, labels, reduction)


@dataclass
class _Chunk:
    x: torch.Tensor
    y: torch.Tensor
    weight: float
    graph: tuple | None = None


class HessianOperator:
    """Products with the Hessian (``kind="hessian"``) or the Gauss-Newton matrix (``kind="ggn"``) of a model's loss.

    The loss is the mean of ``loss(logits, labels)`` over ``data`` (``LabeledData`` or an ``(images, labels)``
    pair), or over a seeded subsample of ``subsample`` examples drawn from ``generator``. ``batch_size`` bounds the
    examples in one forward pass (``None``: all at once); results are exactly the full-data products.

    ``params``: the parameters to differentiate (default: all that require grad), flattened in order.
    ``bn``: ``"eval"`` or ``"batch"`` (see the module docstring). ``batched``: issue blocks of products with
    ``is_grads_batched`` (``"auto"``: on CUDA, and on CPU for chunks of at most ``BATCHED_MAX_EXAMPLES``
    examples; the module docstring says why). ``retain``: keep each chunk's gradient graph between products
    (``"auto"``: when the data is one chunk).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        loss: LossFn | None = None,
        kind: Literal["hessian", "ggn"] = "hessian",
        batch_size: int | None = None,
        subsample: int | None = None,
        generator: torch.Generator | None = None,
        params: Sequence[torch.Tensor] | None = None,
        bn: Literal["eval", "batch"] = "eval",
        batched: bool | Literal["auto"] = "auto",
        retain: bool | Literal["auto"] = "auto",
    ):
        if kind not in ("hessian", "ggn"):
            raise ValueError(f"kind must be 'hessian' or 'ggn', not {kind!r}")
        if bn not in ("eval", "batch"):
            raise ValueError(f"bn must be 'eval' or 'batch', not {bn!r}")
        self.model = model
        self.kind = kind
        self.bn = bn
        self.loss = loss or _default_loss
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        if not self.params:
            raise ValueError("no parameters require grad")
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.size = sum(self.numels)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.products = 0

        images, labels = (data.images, data.labels) if hasattr(data, "images") else data
        n = int(images.shape[0])
        if subsample is not None and subsample < n:
            idx = torch.randperm(n, generator=generator)[:subsample].sort().values
            images, labels = images[idx.to(images.device)], labels[idx.to(labels.device)]
            n = subsample
        if n == 0:
            raise ValueError("no examples")
        self.num_examples = n
        self.images, self.labels = images, labels  # the examples of the loss (after subsampling), for minibatches
        bs = n if batch_size is None else max(1, min(int(batch_size), n))
        self.chunks = [
            _Chunk(images[s : s + bs], labels[s : s + bs], min(bs, n - s) / n) for s in range(0, n, bs)
        ]
        if bn == "batch" and len(self.chunks) > 1 and batchnorm_layers(model):
            raise ValueError(
                "bn='batch' couples the examples of a batch, so the Hessian over several chunks is not the Hessian "
                "of one loss; use bn='eval' or batch_size=None"
            )
        if batched == "auto":
            batched = self.device.type == "cuda" or bs <= BATCHED_MAX_EXAMPLES
        self.batched = bool(batched)
        self.retain = (len(self.chunks) == 1) if retain == "auto" else bool(retain)

    # -- flat <-> per-parameter
    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        lead = flat.shape[:-1]
        return [t.reshape(*lead, *s) for t, s in zip(torch.split(flat, self.numels, dim=-1), self.shapes, strict=True)]

    def _flatten(self, tensors: Sequence[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
        parts = [
            (torch.zeros(*lead, n, device=self.device, dtype=self.dtype) if t is None else t.reshape(*lead, n))
            for t, n in zip(tensors, self.numels, strict=True)
        ]
        return torch.cat(parts, dim=-1)

    # -- graphs
    def _build(self, chunk: _Chunk) -> tuple:
        """The graph a product differentiates through, built under the BN policy with state restored."""
        with preserved_state(self.model, restore_buffers=self.bn == "batch"):
            self.model.train(self.bn == "batch")
            x = chunk.x.to(self.device)
            y = chunk.y.to(self.device)
            with torch.enable_grad():
                logits = self.model(x)
                loss = self.loss(logits, y, "mean") * chunk.weight
                if self.kind == "hessian":
                    grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                    used = [(g, p) for g, p in zip(grads, self.params, strict=True) if g is not None]
                    return ("hessian", [g for g, _ in used], [p for _, p in used],
                            [i for i, g in enumerate(grads) if g is not None])
                # Gauss-Newton: G v = J^T H_z J v with H_z the Hessian of the loss in the logits z.
                gz = torch.autograd.grad(loss, logits, create_graph=True)[0]
                dummy = torch.zeros_like(logits, requires_grad=True)
                jt = torch.autograd.grad(logits, self.params, grad_outputs=dummy, create_graph=True,
                                         allow_unused=True)
                used_idx = [i for i, g in enumerate(jt) if g is not None]
                return ("ggn", logits, gz, dummy, [jt[i] for i in used_idx], [self.params[i] for i in used_idx],
                        used_idx)

    def _product(self, graph: tuple, vectors: list[torch.Tensor], batched: bool,
                 only: int | None = None) -> list[torch.Tensor | None]:
        """Per-parameter products; with ``only``, the diagonal block of parameter ``only`` (others ``None``)."""
        out: list[torch.Tensor | None] = [None] * len(self.params)
        idx = graph[-1]
        keep = list(range(len(idx))) if only is None else [j for j, i in enumerate(idx) if i == only]
        if not keep:  # the parameter does not reach the loss: its block is zero
            return out
        if graph[0] == "hessian":
            _, grads, params, _ = graph
            res = torch.autograd.grad([grads[j] for j in keep], [params[j] for j in keep],
                                      grad_outputs=[vectors[idx[j]] for j in keep], retain_graph=True,
                                      is_grads_batched=batched, allow_unused=True)
        else:
            _, logits, gz, dummy, jt, params, _ = graph
            jv = torch.autograd.grad([jt[j] for j in keep], dummy, grad_outputs=[vectors[idx[j]] for j in keep],
                                     retain_graph=True, is_grads_batched=batched)[0]
            hjv = torch.autograd.grad(gz, logits, grad_outputs=jv, retain_graph=True, is_grads_batched=batched)[0]
            res = torch.autograd.grad(logits, [params[j] for j in keep], grad_outputs=hjv, retain_graph=True,
                                      is_grads_batched=batched, allow_unused=True)
        for j, r in zip(keep, res, strict=True):
            out[idx[j]] = r
        return out

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matmat(vector.reshape(1, -1))[0]

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[b, size] -> [b, size]``: one product per row."""
        return self._products(vectors, None)

    def block_matmat(self, index: int, vectors: torch.Tensor) -> torch.Tensor:
        """``[b, numel] -> [b, numel]``: products with the diagonal block of parameter ``index`` (H_pp V).

        Autograd visits only the part of the graph between that parameter's gradient and the parameter, so the
        blocks of late layers cost a small fraction of a full product (the last layer's about 1 %, measured on the
        benchmark ConvNet). Each row counts as one product.
        """
        return self._products(vectors, index)

    def _products(self, vectors: torch.Tensor, only: int | None) -> torch.Tensor:
        """Full products (``only=None``) or products with parameter ``only``'s diagonal block, summed over chunks."""
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        b = int(vectors.shape[0])

        def split(flat: torch.Tensor) -> list[torch.Tensor]:
            if only is None:
                return self._unflatten(flat)
            parts = [flat.new_empty(0)] * len(self.params)  # only parameter ``only``'s part is read
            parts[only] = flat.reshape(*flat.shape[:-1], *self.shapes[only])
            return parts

        def join(res: list[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
            if only is None:
                return self._flatten(res, lead)
            r = res[only]
            return torch.zeros(*lead, self.numels[only], device=self.device, dtype=self.dtype) if r is None \
                else r.reshape(*lead, -1)

        total = torch.zeros(b, self.size if only is None else self.numels[only], device=self.device, dtype=self.dtype)
        with preserved_state(self.model):
            for chunk in self.chunks:
                graph = chunk.graph or self._build(chunk)
                if self.retain:
                    chunk.graph = graph
                if self.batched and b > 1:
                    total += join(self._product(graph, split(vectors), True, only), (b,))
                else:
                    for j in range(b):
                        total[j] += join(self._product(graph, split(vectors[j]), False, only), ())
                del graph
        self.products += b
        return total.detach()

    def gradient(self) -> torch.Tensor:
        """The flat loss gradient (side-effect free), e.g. to check the operator's loss."""
        total = torch.zeros(self.size, device=self.device, dtype=self.dtype)
        with preserved_state(self.model, restore_buffers=self.bn == "batch"):
            self.model.train(self.bn == "batch")
            for chunk in self.chunks:
                with torch.enable_grad():
                    loss = self.loss(self.model(chunk.x.to(self.device)), chunk.y.to(self.device), "mean")
                    g = torch.autograd.grad(loss * chunk.weight, self.params, allow_unused=True)
                total += self._flatten(g, ())
        return total

    def close(self) -> None:
        """Free the retained graphs (they also go when the operator is garbage collected)."""
        for chunk in self.chunks:
            chunk.graph = None


def dense_matrix(op: CurvatureOperator, block: int = 64) -> torch.Tensor:
    """The explicit ``[size, size]`` matrix by products with the identity (small models only)."""
    n = op.size
    rows = []
    for s in range(0, n, block):
        eye = torch.zeros(min(block, n - s), n, device=op.device, dtype=op.dtype)
        eye[torch.arange(eye.shape[0]), torch.arange(s, s + eye.shape[0])] = 1
        rows.append(op.matmat(eye))
    return torch.cat(rows)


# ---------------------------------------------------------------------------------------------------------- trace
@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate: ``value`` ± ``stderr`` from ``products`` operator products.

    ``samples`` are the per-probe quadratic forms (for Hutch++, those of the deflated remainder, to which
    ``exact_part`` = tr(QᵀAQ) is added). ``converged`` says whether the requested relative precision was reached.
    """

    value: float
    stderr: float
    products: int
    method: str
    converged: bool
    samples: np.ndarray = field(repr=False)
    exact_part: float = 0.0
    rtol: float | None = None

    @property
    def rel_stderr(self) -> float:
        return abs(self.stderr / self.value) if self.value else math.inf


@dataclass(frozen=True)
class Deflation:
    """Orthonormal directions (rows of ``vectors``, ``[k, size]``) whose part of the trace, Σ vᵢᵀAvᵢ = ``trace``,
    is already known, so a trace estimator only samples the rest: tr(A) = ``trace`` + tr(PAP), P = I - VᵀV.

    :meth:`from_eigen` takes Lanczos's Ritz vectors, whose Rayleigh quotients are their Ritz values: the top of the
    spectrum, found anyway when eigenvalues are asked for, deflated at no extra product (Hutch++ without a sketch).
    """

    vectors: torch.Tensor
    trace: float

    @classmethod
    def from_eigen(cls, eig: EigenResult) -> Deflation:
        return cls(eig.eigenvectors, float(eig.eigenvalues.sum()))

    def project(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` with its components along the directions removed (rows)."""
        q = self.vectors.to(device=v.device, dtype=v.dtype)
        return v - (v @ q.T) @ q


def _stderr(samples: list[float]) -> float:
    if len(samples) < 2:
        return math.inf
    return float(np.std(samples, ddof=1) / math.sqrt(len(samples)))


def _check_budget(max_products: int, needed: int, what: str) -> None:
    if max_products < needed:
        raise ValueError(f"{what} needs at least {needed} products; max_products is {max_products}")


class _Pilot:
    """The ``abandon`` check of a stochastic estimator: once, at ``min_samples``, with its predicted seconds left."""

    def __init__(self, abandon: Callable[[float, int], bool] | None, rtol: float | None, min_samples: int):
        self.abandon = abandon if rtol is not None else None
        self.rtol = rtol
        self.min_samples = max(2, min_samples)
        self.start = time.perf_counter()

    def gives_up(self, samples: list[float], total: float, used: int) -> bool:
        if self.abandon is None or len(samples) < self.min_samples:
            return False
        abandon, self.abandon = self.abandon, None  # asked once
        per_sample = (time.perf_counter() - self.start) / len(samples)
        need = float(np.var(samples, ddof=1)) / (self.rtol * abs(total)) ** 2 if total else math.inf
        return bool(abandon(max(0.0, need - len(samples)) * per_sample, used))


def hutchinson(
    op: CurvatureOperator,
    *,
    rtol: float | None = 0.02,
    max_products: int = 1000,
    min_samples: int = 10,
    block: int = 1,
    generator: torch.Generator | None = None,
    stop: Literal["precision", "pyhessian-0.1"] = "precision",
    tol: float = 1e-3,
    abandon: Callable[[float, int], bool] | None = None,
) -> TraceEstimate:
    """Hutchinson's estimator with Rademacher probes: mean of vᵀAv, standard error from the sample spread.

    ``stop="precision"``: draw probes (``block`` at a time) until stderr <= ``rtol`` * |mean| with at least
    ``min_samples`` probes, or until ``max_products``; ``rtol=None`` uses exactly ``max_products`` probes.
    ``stop="pyhessian-0.1"`` reproduces PyHessian 0.1 (the paper's tool): stop as soon as
    ``|mean_i - mean_{i-1}| / (mean_{i-1} + 1e-6) < tol`` *without* an absolute value in the denominator (so a
    negative first sample stops it after two probes), at most ``max_products`` (PyHessian: 100) probes.
    ``abandon``: see :func:`auto_trace`.
    """
    _check_budget(max_products, 1, "hutchinson")
    samples: list[float] = []
    prev = 0.0
    converged = False
    pilot = _Pilot(abandon, rtol, min_samples)
    while len(samples) < max_products:
        b = 1 if stop == "pyhessian-0.1" else max(1, min(block, max_products - len(samples)))
        v = rademacher(b, op.size, generator, op.device, op.dtype)
        av = op.matmat(v)
        samples.extend((v * av).sum(1).double().cpu().tolist())
        mean = float(np.mean(samples))
        if stop == "pyhessian-0.1":
            if abs(mean - prev) / (prev + 1e-6) < tol:
                converged = True
                break
            prev = mean
        elif rtol is not None and len(samples) >= min_samples and _stderr(samples) <= rtol * abs(mean):
            converged = True
            break
        elif stop == "precision" and pilot.gives_up(samples, mean, len(samples)):
            break
    value = float(np.mean(samples))
    return TraceEstimate(value, _stderr(samples), len(samples), f"hutchinson[{stop}]",
                         converged if (rtol is not None or stop != "precision") else True,
                         np.asarray(samples), 0.0, rtol)


def hutchpp(
    op: CurvatureOperator,
    *,
    rtol: float | None = 0.02,
    max_products: int = 1000,
    sketch: int | None = None,
    min_samples: int = 10,
    block: int = 1,
    generator: torch.Generator | None = None,
    abandon: Callable[[float, int], bool] | None = None,
    deflate: Deflation | None = None,
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021), adaptive in its last stage.

    A sketch Q = orth(A S) of ``sketch`` Rademacher columns captures the dominant eigenspace; tr(QᵀAQ) is
    computed exactly (``sketch`` more products), and the remainder tr((I-QQᵀ)A(I-QQᵀ)) by Hutchinson with
    projected Rademacher probes until the stated relative precision (or the budget). The standard error is that
    of the remainder estimate, conditional on Q. Default sketch: ``min(20, max_products // 4)``.
    ``deflate``: use these known directions instead of a sketch (no sketch products). ``abandon``: see
    :func:`auto_trace`.
    """
    method = "hutch++" if deflate is None else "hutch++[deflated]"
    if deflate is None:
        k = sketch if sketch is not None else max(1, min(20, max_products // 4))
        k = min(k, op.size)
        _check_budget(max_products, 2 * k + 2, "hutchpp")
        S = rademacher(k, op.size, generator, op.device, op.dtype)
        Y = op.matmat(S)
        Q, _ = torch.linalg.qr(Y.T.double())
        Q = Q.to(op.dtype)  # [n, k]
        AQ = op.matmat(Q.T.contiguous())
        deflate = Deflation(Q.T.contiguous(), float((Q.T * AQ).sum().double()))
        used = 2 * k
    else:
        _check_budget(max_products, 2, "hutchpp")
        used = 0
    exact = deflate.trace
    samples: list[float] = []
    converged = False
    pilot = _Pilot(abandon, rtol, min_samples)
    while used < max_products:
        b = max(1, min(block, max_products - used))
        v = deflate.project(rademacher(b, op.size, generator, op.device, op.dtype))
        av = op.matmat(v)
        used += b
        samples.extend((v * av).sum(1).double().cpu().tolist())
        total = exact + float(np.mean(samples))
        if rtol is not None and len(samples) >= min_samples and _stderr(samples) <= rtol * abs(total):
            converged = True
            break
        if pilot.gives_up(samples, total, used):
            break
    value = exact + (float(np.mean(samples)) if samples else 0.0)
    return TraceEstimate(value, _stderr(samples), used, method, converged or rtol is None,
                         np.asarray(samples), exact, rtol)


def minibatch_trace(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 128,
    probes_per_batch: int = 2,
    rtol: float | None = 0.02,
    max_products: int = 1000,
    min_batches: int = 10,
    generator: torch.Generator | None = None,
    loss: LossFn | None = None,
    kind: Literal["hessian", "ggn"] = "hessian",
    bn: Literal["eval", "batch"] = "eval",
    abandon: Callable[[float, int], bool] | None = None,
    deflate: Deflation | None = None,
) -> TraceEstimate:
    """Doubly stochastic Hutchinson: tr(H) of the mean loss over ``data`` from random minibatches and probes.

    Each round draws ``batch_size`` examples without replacement (seeded) and ``probes_per_batch`` Rademacher probes
    v, and records mean vᵀ H_B v, where H_B is the Hessian of the batch's mean loss. Under ``bn="eval"`` the loss is a
    mean of per-example losses, so E[tr H_B] = tr H: the estimate is unbiased for the full-data trace, and its standard
    error (from the iid per-round means) includes the data-sampling variance. A product on a batch costs
    ``batch_size / N`` of a full-data product, so when the probe variance dominates this reaches a given precision in
    much less time. ``products`` counts batch products; ``samples`` holds the per-round means.
    ``deflate``: known directions of the full-data Hessian; rounds then sample only the projected remainder
    (E[tr(P H_B P)] = tr(P H P), still unbiased). ``abandon``: see :func:`auto_trace`.
    """
    images, labels = (data.images, data.labels) if hasattr(data, "images") else data
    n = int(images.shape[0])
    b = min(batch_size, n)
    if bn == "batch" and batchnorm_layers(model) and b < n:
        raise ValueError("bn='batch' makes a minibatch Hessian a different loss's Hessian; use bn='eval'")
    rounds: list[float] = []
    used = 0
    converged = False
    exact = deflate.trace if deflate is not None else 0.0
    pilot = _Pilot(abandon, rtol, min_batches)
    while used + probes_per_batch <= max_products:
        idx = torch.randperm(n, generator=generator)[:b]
        op = HessianOperator(model, (images[idx.to(images.device)], labels[idx.to(labels.device)]), loss=loss,
                             kind=kind, bn=bn, retain=True)
        v = rademacher(probes_per_batch, op.size, generator, op.device, op.dtype)
        if deflate is not None:
            v = deflate.project(v)
        rounds.append(float((v * op.matmat(v)).sum(1).double().mean()))
        op.close()
        used += probes_per_batch
        total = exact + float(np.mean(rounds))
        if rtol is not None and len(rounds) >= min_batches and _stderr(rounds) <= rtol * abs(total):
            converged = True
            break
        if pilot.gives_up(rounds, total, used):
            break
    if not rounds:
        raise ValueError(f"max_products {max_products} < probes_per_batch {probes_per_batch}")
    method = f"minibatch-hutchinson[b={b}{', deflated' if deflate is not None else ''}]"
    return TraceEstimate(exact + float(np.mean(rounds)), _stderr(rounds), used, method,
                         converged or rtol is None, np.asarray(rounds), exact, rtol)


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
    sync = torch.cuda.synchronize if op.device.type == "cuda" else (lambda: None)
    total = 0.0
    for index, numel in enumerate(_blocks(op)):
        v = torch.ones(1, numel, device=op.device, dtype=op.dtype)
        sync()
        t = time.perf_counter()
        _unit_block_products(op, index, v)
        sync()
        total += (time.perf_counter() - t) * numel
        if total > limit:
            break
    return total


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


def trace(op: CurvatureOperator, method: str = "hutchpp", **kwargs: Any) -> TraceEstimate:
    """``hutchpp`` (default) or ``hutchinson``."""
    if method in ("hutchpp", "hutch++"):
        return hutchpp(op, **kwargs)
    if method == "hutchinson":
        return hutchinson(op, **kwargs)
    raise ValueError(f"unknown trace method {method!r}: use 'hutchpp' or 'hutchinson'")


# ------------------------------------------------------------------------------------------------------- lanczos
@dataclass(frozen=True)
class EigenResult:
    """Ritz pairs: ``eigenvalues`` [k] (descending), ``eigenvectors`` [k, size], per-pair ``residuals``
    (||A x - θ x|| for unit x, a bound on |θ - λ| for the nearest eigenvalue λ), ``error_bounds`` (the sharper
    min(residual, residual² / gap), see ``lanczos``) and ``converged`` flags."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    residuals: torch.Tensor
    converged: list[bool]
    iterations: int
    products: int
    error_bounds: torch.Tensor | None = None


def _lanczos_run(op: CurvatureOperator, start: torch.Tensor, max_iter: int,
                 check: Callable[[np.ndarray, np.ndarray, float, int], bool] | None = None):
    """Lanczos with full reorthogonalization. Returns (Q [m, n], alphas, betas) with betas[m-1] the residual norm."""
    n = op.size
    m_max = min(max_iter, n)
    Q = torch.zeros(m_max, n, device=op.device, dtype=op.dtype)
    q = start / start.norm()
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(m_max):
        Q[j] = q
        w = op.matmat(q.reshape(1, -1))[0]
        alpha = float(torch.dot(w.double(), q.double()))
        w = w - alpha * q - (betas[-1] * Q[j - 1] if j > 0 else 0.0)
        # full reorthogonalization, twice (Kahan–Parlett "twice is enough")
        for _ in range(2):
            w = w - (Q[: j + 1] @ w) @ Q[: j + 1]
        beta = float(w.double().norm())
        alphas.append(alpha)
        betas.append(beta)
        scale = max(abs(a) for a in alphas) or 1.0
        if beta <= 1e-10 * scale * math.sqrt(n):  # invariant subspace: the Ritz values are exact
            betas[-1] = 0.0
            break
        if check is not None and check(np.asarray(alphas), np.asarray(betas), beta, j + 1):
            break
        q = w / beta
    m = len(alphas)
    return Q[:m], np.asarray(alphas), np.asarray(betas)


def _tridiag_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T = np.diag(alphas) + np.diag(betas[: len(alphas) - 1], 1) + np.diag(betas[: len(alphas) - 1], -1)
    return np.linalg.eigh(T)


def _error_bounds(theta: np.ndarray, res: np.ndarray) -> np.ndarray:
    """Per Ritz value, a bound on |θ_i - λ_i|: min(r_i, r_i² / gap_i) (Kato–Temple).

    ``gap_i`` is a lower bound on the distance from θ_i to every other eigenvalue, taken from the other Ritz
    values' intervals θ_j ± r_j (each holds an eigenvalue); the quadratic bound applies when gap_i > r_i, i.e. when
    θ_i ± gap_i holds exactly that one eigenvalue. It assumes no eigenvalue is missing from the Ritz values, the
    same assumption as the residual test (see ``guard``).
    """
    if len(theta) < 2:
        return res.copy()
    dist = np.abs(theta[:, None] - theta[None, :]) - res[None, :]
    np.fill_diagonal(dist, np.inf)
    gap = dist.min(axis=1)
    sharp = gap > res
    out = res.copy()
    out[sharp] = res[sharp] ** 2 / gap[sharp]
    return np.minimum(out, res)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    if which == "LA":
        return np.argsort(-theta)[:k]
    if which == "LM":
        return np.argsort(-np.abs(theta))[:k]
    if which == "SA":
        return np.argsort(theta)[:k]
    raise ValueError(f"which must be 'LA', 'LM' or 'SA', not {which!r}")


def lanczos(
    op: CurvatureOperator,
    k: int = 5,
    *,
    tol: float = 1e-5,
    max_iter: int | None = None,
    which: Literal["LA", "LM", "SA"] = "LA",
    generator: torch.Generator | None = None,
    min_iter: int | None = None,
    per_eigenvalue: bool = False,
    guard: int = 3,
) -> EigenResult:
    """The ``k`` extreme eigenpairs by Lanczos with full reorthogonalization (largest algebraic by default).

    Each Ritz pair has a residual r = ||Ax - θx|| = β_m |s_m|, and an eigenvalue lies within r of θ; when the
    other Ritz values leave a gap g > r around θ, it lies within r² / g (Kato–Temple), which is much sharper once
    r is small. ``error_bounds`` holds min(r, r² / g). Stops when every wanted pair's error bound is
    <= ``tol`` * max |θ|, or after ``max_iter`` products (default ``min(size, max(4k + 20, 80))``).
    ``per_eigenvalue=True`` asks instead for error bound <= ``tol`` * |θ_i| for each pair: each θ_i is then
    within relative ``tol`` of an eigenvalue. On the benchmark ConvNet Hessian the quadratic bound stops 1-2
    products earlier than the residual alone. A single start vector cannot separate exactly repeated
    eigenvalues; Hessians of trained networks rarely have them.

    ``guard``: the stopping test also asks the next ``guard`` Ritz pairs to be converged. The bounds only say each
    Ritz value is near *some* eigenvalue; on a clustered spectrum an unlucky start can certify the 6th-largest
    eigenvalue as the 5th before the Krylov space has found the missing one. On the benchmark ConvNet's Hessians
    at five checkpoints of training (docs/curvature.md) ``guard=2`` still did that for 2 of 40 starts at one
    checkpoint; ``guard=3`` (the default) for none of 200, at about one product more than the residual test with
    ``guard=2`` had needed.
    """
    n = op.size
    k = min(k, n)
    if guard < 0:
        raise ValueError(f"guard must be >= 0, not {guard}")
    max_iter = min(n, max_iter or max(4 * k + 20, 80))
    min_iter = min(max_iter, min_iter or k + guard + 2)
    start = _normal(1, n, generator, op.device, op.dtype)[0]

    def check(alphas: np.ndarray, betas: np.ndarray, beta: float, m: int) -> bool:
        if m < min_iter:
            return False
        theta, S = _tridiag_eigh(alphas, betas)
        idx = _select(theta, min(k + guard, n), which)
        bounds = _error_bounds(theta, beta * np.abs(S[-1]))[idx]
        ref = np.abs(theta[idx]) if per_eigenvalue else max(np.max(np.abs(theta)), 1e-30)
        return bool(np.all(bounds <= tol * ref))

    before = op.products
    Q, alphas, betas = _lanczos_run(op, start, max_iter, check)
    theta, S = _tridiag_eigh(alphas, betas)
    idx = _select(theta, min(k, len(theta)), which)
    scale = np.abs(theta[idx]) if per_eigenvalue else max(float(np.max(np.abs(theta))), 1e-30)
    res_all = betas[-1] * np.abs(S[-1])
    res, bounds = res_all[idx], _error_bounds(theta, res_all)[idx]
    vecs = torch.as_tensor(S[:, idx].T, dtype=op.dtype, device=op.device) @ Q
    vecs = vecs / vecs.norm(dim=1, keepdim=True)
    return EigenResult(
        torch.as_tensor(theta[idx], dtype=torch.float64), vecs, torch.as_tensor(res, dtype=torch.float64),
        [bool(b <= tol * sc) for b, sc in zip(bounds, np.broadcast_to(scale, bounds.shape), strict=True)],
        len(alphas), op.products - before, torch.as_tensor(bounds, dtype=torch.float64),
    )


def subspace_overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Overlap of the spans of the rows of ``a`` [k, n] and ``b`` [l, n]: ||Q_aᵀ Q_b||_F² / min(k, l), in [0, 1]."""
    qa, _ = torch.linalg.qr(a.T.double())
    qb, _ = torch.linalg.qr(b.T.to(qa.device).double())
    return float((qa.T @ qb).pow(2).sum() / min(qa.shape[1], qb.shape[1]))


# ------------------------------------------------------------------------------------------------ spectral density
@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature: per start vector, Ritz ``nodes`` and quadrature ``weights`` (sum 1)."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    products: int
    size: int

    def density(self, grid: np.ndarray, sigma: float | None = None) -> np.ndarray:
        """The eigenvalue density on ``grid``, each node smoothed by a Gaussian of width ``sigma``."""
        lo = min(float(nd.min()) for nd in self.nodes)
        hi = max(float(nd.max()) for nd in self.nodes)
        sigma = sigma or max(hi - lo, 1e-12) / 200
        out = np.zeros_like(grid, dtype=float)
        for nodes, weights in zip(self.nodes, self.weights, strict=True):
            diff = grid[:, None] - nodes[None, :]
            out += (weights[None, :] * np.exp(-0.5 * (diff / sigma) ** 2)).sum(1) / (sigma * math.sqrt(2 * math.pi))
        return out / len(self.nodes)

    def trace(self) -> float:
        """The SLQ trace estimate n · E[Σ w θ] (a by-product; use hutchpp for a trace with a standard error)."""
        return float(self.size * np.mean([(w * t).sum() for t, w in zip(self.nodes, self.weights, strict=True)]))

    def figure(self, path: Path, title: str = "", points: int = 1000) -> Path:
        from .report.figures import plt, save

        lo = min(float(nd.min()) for nd in self.nodes)
        hi = max(float(nd.max()) for nd in self.nodes)
        pad = 0.05 * max(hi - lo, 1e-12)
        grid = np.linspace(lo - pad, hi + pad, points)
        dens = self.density(grid)
        pyplot = plt()
        fig, ax = pyplot.subplots(figsize=(6, 3.5))
        ax.semilogy(grid, dens + 1e-12, color="#0072B2")
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log)")
        ax.set_ylim(bottom=max(1e-8, float(dens[dens > 0].min()) if (dens > 0).any() else 1e-8))
        if title:
            ax.set_title(title)
        return save(fig, Path(path))


def spectral_density(op: CurvatureOperator, *, iters: int = 80, vectors: int = 1,
                     generator: torch.Generator | None = None) -> SpectralDensity:
    """SLQ (Lin, Saad, Yang 2016; Ghorbani et al. 2019): ``vectors`` Rademacher starts, ``iters`` Lanczos steps each
    with full reorthogonalization; nodes are the Ritz values, weights the squared first components of T's
    eigenvectors."""
    nodes, weights = [], []
    before = op.products
    for _ in range(vectors):
        start = rademacher(1, op.size, generator, op.device, op.dtype)[0]
        _, alphas, betas = _lanczos_run(op, start, iters)
        theta, S = _tridiag_eigh(alphas, betas)
        nodes.append(theta)
        weights.append(S[0, :] ** 2)
    return SpectralDensity(nodes, weights, op.products - before, op.size)
