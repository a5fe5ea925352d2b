"""Comparing influence estimates: correlations with exact leave-one-out, rank agreement, top-k, label agreement,
and the reverse direction's gradient similarity."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .objective import Objective, ParamSubset


def correlations(estimate: torch.Tensor, exact: torch.Tensor) -> dict[str, float]:
    """Pearson and Spearman over all entries, and the mean per-row Spearman (each training example's ranking)."""
    import numpy as np
    from scipy.stats import pearsonr, spearmanr

    a = estimate.double().flatten().numpy()
    b = exact.double().flatten().numpy()
    if np.std(a) == 0 or np.std(b) == 0:
        return {"pearson": 0.0, "spearman": 0.0, "row_spearman": 0.0}
    pairs = zip(estimate.double().numpy(), exact.double().numpy(), strict=True)
    rows = [spearmanr(r1, r2).statistic for r1, r2 in pairs if np.std(r1) > 0 and np.std(r2) > 0]
    return {"pearson": float(pearsonr(a, b).statistic), "spearman": float(spearmanr(a, b).statistic),
            "row_spearman": float(np.mean(rows)) if rows else 0.0}


def rank_agreement(influences: Sequence[torch.Tensor]) -> float:
    """Mean Spearman correlation between the rows of two initializations' influence matrices, over all pairs."""
    import numpy as np
    from scipy.stats import spearmanr

    vals = []
    for a in range(len(influences)):
        for b in range(a + 1, len(influences)):
            for r1, r2 in zip(influences[a].double().numpy(), influences[b].double().numpy(), strict=True):
                if np.std(r1) > 0 and np.std(r2) > 0:
                    vals.append(spearmanr(r1, r2).statistic)
    return float(np.mean(vals)) if vals else float("nan")


def top_k(influence: torch.Tensor, k: int, helped: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the ``k`` most helped (largest influence) or most harmed (smallest) columns: (indices, values)."""
    k = min(k, influence.shape[1])
    vals, idx = torch.topk(influence, k, dim=1, largest=helped)
    return idx, vals


def label_agreement(influence: torch.Tensor, train_labels: torch.Tensor, test_labels: torch.Tensor, k: int) -> float:
    """Mean over training examples of the fraction of their top-k most helped test examples sharing their label."""
    idx, _ = top_k(influence, k)
    return float((test_labels[idx] == train_labels.view(-1, 1)).float().mean())


def gradient_similarity(model: nn.Module, query_x: torch.Tensor, query_y: torch.Tensor, pool_x: torch.Tensor,
                        pool_y: torch.Tensor, params: ParamSubset = "last", chunk: int = 512) -> torch.Tensor:
    """Cosine similarity ``[q, r]`` between per-example loss gradients of queries and a pool (reverse direction)."""
    obj = Objective(model, query_x, query_y, params)
    gq = torch.nn.functional.normalize(obj.train_grads(), dim=1)
    out = []
    for _, g in obj.test_grad_chunks(pool_x, pool_y, chunk):
        out.append((gq @ torch.nn.functional.normalize(g, dim=1).T).cpu())
    return torch.cat(out, 1)
