"""Influence of training examples on test examples: exact leave-one-out retraining and audited approximations.

Sign convention (defined here and in docs/influence.md, nowhere else)::

    influence[i, j] = loss_j(model trained without example i) - loss_j(model trained on all examples)

Positive: removing ``i`` raises test example ``j``'s loss, so ``i`` *helps* ``j``. Negative: ``i`` harms ``j``.
Margin influence uses the same orientation, ``margin_j(all) - margin_j(without i)``, so positive again means helps.
Every approximation backend estimates this same quantity (same sign, same 1/n scale for influence functions).

Modules (everything public is importable from ``ddprobe.influence``):

* ``retraining``: ``fit`` (the lean full-batch trainer), ``exact_loo`` and its strategies, ``LOOResult``.
* ``objective``: ``Objective``, a model's training loss as a function of a flat vector of a parameter subset
  (``last`` = the classifier head on frozen features, or ``all``), with per-example gradients and Hessian-vector
  products.
* ``backends``: the backend contract (``InfluenceProblem``, ``BackendResult``, ``InfluenceBackend``) and the registry
  (``BACKENDS``, ``register_backend``, ``get_backend``).
* ``solvers``: ``cg_solve``, ``lissa_solve``, ``top_eigenvalue``, ``arnoldi_eig``.
* ``kfac``: ``KroneckerFactored``, K-FAC and EK-FAC approximations of the Gauss-Newton matrix over every
  ``Linear`` and ``Conv2d`` layer.
* ``methods``: the built-in backends ``explicit``, ``cg``, ``lissa``, ``arnoldi``, ``ekfac``, ``kfac``, ``tracin``.
* ``audit``: ``correlations``, ``rank_agreement``, ``top_k``, ``label_agreement``, ``gradient_similarity``.
"""

from __future__ import annotations

from .audit import correlations, gradient_similarity, label_agreement, rank_agreement, top_k
from .backends import (
    BACKENDS,
    BackendResult,
    InfluenceBackend,
    InfluenceProblem,
    get_backend,
    register_backend,
)
from .kfac import KroneckerFactored
from .methods import EKFAC, KFAC, Arnoldi, ConjugateGradient, Explicit, LiSSA, TracIn
from .objective import Curvature, Objective, ParamSubset, head_of
from .retraining import (
    LOOResult,
    Strategy,
    _Job,
    _loo_vmapped,
    _retrain,
    _retrain_many,
    exact_loo,
    fit,
    lean_unsupported,
    loo_subsets,
    margins_of,
    resolve_strategy,
    test_outputs,
)
from .solvers import arnoldi_eig, cg_solve, lissa_solve, top_eigenvalue

__all__ = [
    "fit", "lean_unsupported", "test_outputs", "margins_of", "exact_loo", "loo_subsets", "resolve_strategy",
    "LOOResult", "Strategy", "Objective", "ParamSubset", "Curvature", "head_of", "InfluenceProblem", "BackendResult",
    "InfluenceBackend", "BACKENDS", "register_backend", "get_backend", "Explicit", "ConjugateGradient", "LiSSA",
    "Arnoldi", "TracIn", "EKFAC", "KFAC", "KroneckerFactored", "cg_solve", "lissa_solve", "top_eigenvalue",
    "arnoldi_eig", "correlations",
    "rank_agreement", "top_k", "label_agreement", "gradient_similarity",
    # used by benchmarks/bench_influence.py and the executor test
    "_Job", "_retrain", "_retrain_many", "_loo_vmapped",
]
