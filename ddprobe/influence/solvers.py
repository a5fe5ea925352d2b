"""Linear solvers and eigensolvers on Hessian-vector products: CG, LiSSA, power iteration, Arnoldi."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def cg_solve(op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, max_iter: int,
             tol: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Solve ``op(X) = B`` column by column (vectorized); ``op`` must be symmetric positive definite to converge.

    A search direction with curvature ``p^T op(p) <= 0`` shows that the operator is not positive definite: CG's
    answer is then meaningless for every column, so the solve stops at the first such iteration instead of
    iterating on, and ``info`` reports ``negative_curvature`` (how many columns met it there) and
    ``first_negative_curvature_iteration``.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rs = (r * r).sum(0)
    bnorm = b.norm(dim=0).clamp_min(1e-30)
    active = rs.sqrt() > tol * bnorm
    negative_columns = 0
    first_negative: int | None = None
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - reported below
        if not bool(active.any()):
            iterations -= 1
            break
        ap = op(p)
        curv = (p * ap).sum(0)
        negative = active & (curv <= 0)
        if bool(negative.any()):
            negative_columns, first_negative = int(negative.sum()), iterations
            break
        alpha = torch.where(active, rs / curv.clamp_min(1e-30), torch.zeros_like(rs))
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = (r * r).sum(0)
        beta = torch.where(active, rs_new / rs.clamp_min(1e-30), torch.zeros_like(rs))
        p = r + beta * p
        rs = torch.where(active, rs_new, rs)
        active &= rs.sqrt() > tol * bnorm
    rel = float((rs.sqrt() / bnorm).max())
    info: dict[str, Any] = {"iterations": iterations, "relative_residual": rel, "converged": rel <= tol,
                            "negative_curvature": negative_columns}
    if first_negative is not None:
        info["first_negative_curvature_iteration"] = first_negative
    return x, info


def top_eigenvalue(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, iters: int = 30,
                   generator: torch.Generator | None = None, device: Any = "cpu") -> float:
    """Largest-magnitude eigenvalue of a symmetric operator by power iteration."""
    v = torch.randn(dim, generator=generator).to(device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        w = hvp(v)
        lam = float(v @ w)
        nrm = w.norm()
        if not torch.isfinite(nrm) or nrm == 0:
            break
        v = w / nrm
    return lam


def lissa_solve(hvp: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor], g: torch.Tensor, n: int, *,
                damping: float, scale: float, depth: int, batch_size: int | None = None,
                generator: torch.Generator | None = None, divergence: float = 1e4) -> tuple[torch.Tensor, dict]:
    """``(H + damping I)^-1 g`` by ``h <- g + h - (H h + damping h) / scale``, returned as ``h / scale``.

    Converges when ``scale`` exceeds the damped Hessian's largest eigenvalue and the damped Hessian is positive
    definite. Stops and reports ``diverged`` (never NaN) when ``|h|`` leaves the bound ``divergence * scale /
    damping * |g|`` or stops being finite.
    """
    h = g.clone()
    gnorm = float(g.norm())
    bound = divergence * scale / max(damping, 1e-12) * max(gnorm, 1e-30)
    info: dict[str, Any] = {"scale": scale, "damping": damping, "depth": depth, "diverged": False}
    for step in range(1, depth + 1):
        idx = None if batch_size is None or batch_size >= n else torch.randperm(n, generator=generator)[:batch_size]
        h = g + h - (hvp(h, idx.to(g.device) if idx is not None else None) + damping * h) / scale
        norm = float(h.norm())
        if not math.isfinite(norm) or norm > bound:
            info.update(diverged=True, step=step, norm=norm if math.isfinite(norm) else "inf",
                        hint="raise scale above the top Hessian eigenvalue, or raise damping")
            return g, info
    info["steps"] = depth
    return h / scale, info


def arnoldi_eig(hvp: Callable[[torch.Tensor], torch.Tensor], dim: int, iterations: int,
                generator: torch.Generator | None = None, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric operator from an Arnoldi iteration with full re-orthogonalization."""
    q = torch.randn(dim, generator=generator, dtype=torch.float64).to(device)
    basis = [q / q.norm()]
    hess = torch.zeros(iterations + 1, iterations, dtype=torch.float64)
    for k in range(iterations):
        w = hvp(basis[k].float()).double()
        for j in range(k + 1):
            hess[j, k] = basis[j] @ w
            w = w - hess[j, k] * basis[j]
        for j in range(k + 1):  # second pass: keeps the basis orthogonal in floating point
            c = basis[j] @ w
            hess[j, k] += c
            w = w - c * basis[j]
        hess[k + 1, k] = w.norm()
        if hess[k + 1, k] < 1e-10:
            iterations = k + 1
            break
        basis.append(w / hess[k + 1, k])
    small = hess[:iterations, :iterations]
    vals, vecs = torch.linalg.eigh(0.5 * (small + small.T))
    q_mat = torch.stack(basis[:iterations], 1)
    return vals.float().to(device), (q_mat @ vecs.to(device)).float()
