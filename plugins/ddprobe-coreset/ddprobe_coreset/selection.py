"""The two selection rules, on a matrix of per-image features. Pure functions: no model, no data set."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


# -- start herding --
def herding(features: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of ``k`` rows picked greedily so that the mean of the picked rows tracks the mean of all rows.

    Step ``t`` adds the row that brings the running mean of the ``t`` picked rows closest to the target mean
    (Welling 2009). Ties go to the lowest index, so the result is deterministic.
    """
    import torch

    target = features.mean(dim=0)
    picked: list[int] = []
    total = torch.zeros_like(target)
    available = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
    for t in range(1, k + 1):
        distance = ((target - (total + features) / t) ** 2).sum(dim=1)
        distance[~available] = float("inf")
        i = int(distance.argmin())
        picked.append(i)
        available[i] = False
        total += features[i]
    return torch.tensor(picked, dtype=torch.long)
# -- end herding --


# -- start kcenter --
def kcenter(features: torch.Tensor, k: int, start: int) -> torch.Tensor:
    """Indices of ``k`` rows by greedy k-center: from row ``start``, repeatedly add the row farthest from all
    picked rows (Sener and Savarese 2018), a 2-approximation of the minimax cover."""
    import torch

    picked = [start]
    nearest = torch.cdist(features, features[start : start + 1]).squeeze(1)
    for _ in range(k - 1):
        i = int(nearest.argmax())
        picked.append(i)
        nearest = torch.minimum(nearest, torch.cdist(features, features[i : i + 1]).squeeze(1))
    return torch.tensor(picked, dtype=torch.long)
# -- end kcenter --
