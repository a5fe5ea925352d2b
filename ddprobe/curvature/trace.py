"""Stochastic trace estimators: Hutchinson, Hutch++, the minibatch estimator, and deflation by known directions."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ..nets import batchnorm_layers
from .operators import CurvatureOperator, HessianOperator, LossFn, rademacher

if TYPE_CHECKING:
    from .eigen import EigenResult


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


def _settled(samples: list[float], exact: float, rtol: float | None, min_samples: int, pilot: _Pilot,
             used: int) -> tuple[bool, bool]:
    """``(stop, converged)`` after a new sample of the part beyond ``exact``: at ``rtol`` relative standard error of
    the total (with at least ``min_samples``), or when the pilot's ``abandon`` hook says so."""
    total = exact + float(np.mean(samples))
    if rtol is not None and len(samples) >= min_samples and _stderr(samples) <= rtol * abs(total):
        return True, True
    return pilot.gives_up(samples, total, used), False


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
        else:
            done, converged = _settled(samples, 0.0, rtol, min_samples, pilot, len(samples))
            if done:
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
        done, converged = _settled(samples, exact, rtol, min_samples, pilot, used)
        if done:
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
        done, converged = _settled(rounds, exact, rtol, min_batches, pilot, used)
        if done:
            break
    if not rounds:
        raise ValueError(f"max_products {max_products} < probes_per_batch {probes_per_batch}")
    method = f"minibatch-hutchinson[b={b}{', deflated' if deflate is not None else ''}]"
    return TraceEstimate(exact + float(np.mean(rounds)), _stderr(rounds), used, method,
                         converged or rtol is None, np.asarray(rounds), exact, rtol)


def trace(op: CurvatureOperator, method: str = "hutchpp", **kwargs: Any) -> TraceEstimate:
    """``hutchpp`` (default) or ``hutchinson``."""
    if method in ("hutchpp", "hutch++"):
        return hutchpp(op, **kwargs)
    if method == "hutchinson":
        return hutchinson(op, **kwargs)
    raise ValueError(f"unknown trace method {method!r}: use 'hutchpp' or 'hutchinson'")
