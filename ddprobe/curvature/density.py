"""Eigenvalue density by stochastic Lanczos quadrature."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .eigen import _lanczos_run, _tridiag_eigh
from .operators import CurvatureOperator, rademacher


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
        from ..report.figures import plt, save

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
