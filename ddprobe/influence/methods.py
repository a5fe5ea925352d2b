"""The built-in influence backends: explicit inverse, CG, LiSSA, Arnoldi, EK-FAC, K-FAC (influence functions)
and TracIn.

Registered by the default plugin ``ddprobe.builtin.influence_backends`` through the ``register_influence_backends``
hook, as a third-party plugin registers its own (``BUILTIN`` lists them).
"""

from __future__ import annotations

import copy
from typing import ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from .backends import BackendResult, InfluenceBackend, InfluenceProblem
from .kfac import Kind
from .objective import Curvature, Objective, ParamSubset
from .solvers import arnoldi_eig, cg_solve, lissa_solve, top_eigenvalue


class _IFOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: ParamSubset = Field("last", description="parameter subset: 'last' (classifier head) or 'all'")
    damping: float = Field(0.01, ge=0, description="added to the curvature's diagonal (Koh & Liang's lambda)")
    curvature: Literal["auto", "hessian", "ggn"] = Field(
        "auto", description="the matrix inverted: the Hessian or the Gauss-Newton matrix (positive semi-definite); "
                            "auto: the Gauss-Newton matrix for params 'all', the Hessian for 'last' (where the two "
                            "are equal for a linear head)")

    def resolved_curvature(self) -> Curvature:
        if self.curvature != "auto":
            return self.curvature
        return "ggn" if self.params == "all" else "hessian"


def _solve_info(o: _IFOptions) -> dict[str, object]:
    """What every influence-function backend reports about the matrix it inverted."""
    return {"curvature": o.resolved_curvature(), "damping": o.damping}


class Explicit(InfluenceBackend):
    name = "explicit"
    description = "influence functions with the explicit damped Hessian inverted exactly (small parameter subsets)"

    class Options(_IFOptions):
        max_params: int = Field(6000, ge=1, description="refuse larger subsets (the Hessian is params^2)")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        if obj.dim > o.max_params:
            return BackendResult(None, "failed", info={"error": f"{obj.dim} parameters > max_params {o.max_params}"})
        h = obj.hessian(o.resolved_curvature()).double()
        eig = torch.linalg.eigvalsh(h)
        damped = h + o.damping * torch.eye(obj.dim, dtype=h.dtype, device=h.device)
        ihvp = torch.linalg.solve(damped, problem.removal_gradients(obj).double()).float()
        return BackendResult(problem.scores_from_ihvp(obj, ihvp), info={
            **_solve_info(o), "params": obj.dim, "min_eigenvalue": float(eig[0]), "max_eigenvalue": float(eig[-1]),
            "negative_eigenvalues": int((eig < -1e-6 * eig.abs().max()).sum())})  # beyond rounding


class ConjugateGradient(InfluenceBackend):
    name = "cg"
    description = "influence functions, H^-1 g by conjugate gradient on Hessian-vector products (one per column)"

    class Options(_IFOptions):
        max_iter: int = Field(100, ge=1)
        tol: float = Field(1e-6, gt=0, description="stop when every residual norm < tol * |g|")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        g = problem.removal_gradients(obj)  # [p, n]

        product = obj.product(o.resolved_curvature())

        def op(v: torch.Tensor) -> torch.Tensor:
            return product(v) + o.damping * v

        x, info = cg_solve(op, g, o.max_iter, o.tol)
        info = {**_solve_info(o), **info}
        if info["negative_curvature"]:
            info.update(error=f"the damped {info['curvature']} is indefinite: at iteration {info['iterations']}, "
                              f"{info['negative_curvature']} of {g.shape[1]} columns met a direction of negative "
                              "curvature",
                        hint="use curvature = 'ggn' (positive semi-definite) or raise damping above the most "
                             "negative eigenvalue")
            return BackendResult(None, "diverged", info=info)
        if not bool(torch.isfinite(x).all()):
            return BackendResult(None, "diverged", info=info)
        if not (info["converged"] or info["relative_residual"] < 1e-2):
            info.update(error=f"relative residual {info['relative_residual']:.2g} after {info['iterations']} "
                              "iterations", hint="raise max_iter or damping")
            return BackendResult(None, "diverged", info=info)
        return BackendResult(problem.scores_from_ihvp(obj, x), info=info)


class LiSSA(InfluenceBackend):
    name = "lissa"
    description = "influence functions, H^-1 g by the LiSSA recursion (damped, scaled, with a divergence check)"

    class Options(_IFOptions):
        depth: int = Field(500, ge=1, description="recursion steps")
        scale: float | Literal["auto"] = Field(
            "auto", description="divides the Hessian; must exceed its top eigenvalue ('auto': 1.5 x power iteration)")
        batch_size: int | None = Field(None, ge=1, description="examples per stochastic HVP (None: all, exact)")
        seed: int = 0
        divergence: float = Field(1e4, gt=1, description="diverged when |h| exceeds this times scale/damping |g|")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        g = problem.removal_gradients(obj)
        gen = torch.Generator().manual_seed(o.seed)
        product = obj.product(o.resolved_curvature())
        if o.scale == "auto":
            lam = top_eigenvalue(product, obj.dim, generator=gen, device=obj.device) + o.damping
            scale = 1.5 * abs(lam) if lam != 0 else 1.0
        else:
            scale = float(o.scale)
        h, info = lissa_solve(lambda v, idx: product(v, idx), g, obj.n, damping=o.damping, scale=scale,
                              depth=o.depth, batch_size=o.batch_size, generator=gen, divergence=o.divergence)
        info = {**_solve_info(o), **info}
        if info["diverged"]:
            return BackendResult(None, "diverged", info=info)
        return BackendResult(problem.scores_from_ihvp(obj, h), info=info)


class Arnoldi(InfluenceBackend):
    name = "arnoldi"
    description = "influence functions on the top eigenspace of the Hessian found by Arnoldi iteration"

    class Options(_IFOptions):
        iterations: int = Field(60, ge=2, description="Krylov subspace size")
        rank: int = Field(30, ge=1, description="eigenpairs kept (largest magnitude)")
        seed: int = 0

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        o = self.options
        obj = problem.objective(o.params)
        gen = torch.Generator().manual_seed(o.seed)
        vals, vecs = arnoldi_eig(obj.product(o.resolved_curvature()), obj.dim, min(o.iterations, obj.dim),
                                 generator=gen, device=obj.device)
        keep = torch.argsort(vals.abs(), descending=True)[: o.rank]
        vals, vecs = vals[keep], vecs[:, keep]
        inv = 1.0 / (vals + o.damping)
        ihvp = vecs @ (inv.unsqueeze(1) * (vecs.T @ problem.removal_gradients(obj)))
        return BackendResult(problem.scores_from_ihvp(obj, ihvp), info={
            **_solve_info(o), "rank": int(vals.numel()), "top_eigenvalue": float(vals.abs().max()),
            "smallest_kept": float(vals.abs().min())})


class TracIn(InfluenceBackend):
    name = "tracin"
    description = "TracIn: lr/n x gradient dot products summed over the training run's checkpoints"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

        params: ParamSubset = Field("last", description="parameter subset: 'last' (classifier head) or 'all'")

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        if not problem.checkpoints:
            return BackendResult(None, "failed", info={"error": "no checkpoints of the training run"})
        net = copy.deepcopy(problem.model)
        total = torch.zeros(problem.n, problem.test_x.shape[0])
        for _, state in problem.checkpoints:  # one checkpoint at a time, never all loaded as models at once
            net.load_state_dict(state)
            obj = Objective(net, problem.train_x, problem.train_y, self.options.params, problem.l2)
            gtr = obj.train_grads()
            for s, g in obj.test_grad_chunks(problem.test_x, problem.test_y):
                total[:, s:s + g.shape[0]] += (gtr @ g.T).cpu()
        return BackendResult(total * problem.lr / problem.n, info={"checkpoints": len(problem.checkpoints)})


class _KroneckerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    params: ParamSubset = Field("all", description="parameter subset: 'all' (every layer) or 'last' (the head)")
    damping: float | Literal["heuristic"] = Field(
        "heuristic", description="added to the eigenvalues: a number, or 'heuristic' = damping_scale x each "
                                 "layer's mean eigenvalue")
    damping_scale: float = Field(0.1, gt=0, description="the heuristic's factor (kronfluence's heuristic: 0.1)")
    others: Literal["skip", "diagonal"] = Field(
        "skip", description="parameters outside Linear/Conv2d layers (norm scales and shifts): left out of the "
                            "influence, or preconditioned by the diagonal of the Gauss-Newton matrix")
    chunk: int = Field(64, ge=1, description="examples per forward pass")


class _Kronecker(InfluenceBackend):
    kind: ClassVar[Kind] = "ekfac"
    Options = _KroneckerOptions

    def _compute(self, problem: InfluenceProblem) -> BackendResult:
        from .kfac import KroneckerFactored

        o = self.options
        factors = KroneckerFactored(problem.model, kind=self.kind, params=o.params, others=o.others,
                                    damping=o.damping, damping_scale=o.damping_scale, l2=problem.l2, chunk=o.chunk)
        scores = factors.influence(problem.train_x, problem.train_y, problem.test_x, problem.test_y)
        return BackendResult(scores, info=factors.describe())


class EKFAC(_Kronecker):
    name = "ekfac"
    description = ("influence functions with EK-FAC: Kronecker-factored Gauss-Newton eigenbasis per Linear/Conv2d "
                   "layer, eigenvalues corrected to the exact gradient second moments")
    kind = "ekfac"


class KFAC(_Kronecker):
    name = "kfac"
    description = "influence functions with K-FAC: Kronecker-factored Gauss-Newton blocks per Linear/Conv2d layer"
    kind = "kfac"


BUILTIN: tuple[type[InfluenceBackend], ...] = (Explicit, ConjugateGradient, LiSSA, Arnoldi, TracIn, EKFAC, KFAC)
