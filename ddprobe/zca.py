"""ZCA whitening fitted on training images (as kornia's ZCAWhitening with eps = 0.1 in the MTT repo)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


@dataclass
class ZCA:
    mean: torch.Tensor  # [D]
    transform: torch.Tensor  # [D, D]
    inverse: torch.Tensor  # [D, D]

    @classmethod
    def fit(cls, images: torch.Tensor, eps: float = 0.1) -> ZCA:
        x = images.reshape(images.shape[0], -1).double()
        mean = x.mean(0)
        xc = x - mean
        cov = xc.T @ xc / max(1, x.shape[0] - 1)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(0)
        w = evecs @ torch.diag(1.0 / torch.sqrt(evals + eps)) @ evecs.T
        w_inv = evecs @ torch.diag(torch.sqrt(evals + eps)) @ evecs.T
        return cls(mean.float(), w.float(), w_inv.float())

    def whiten(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(images.shape[0], -1)
        out = (flat - self.mean.to(flat)) @ self.transform.to(flat)
        return out.reshape(images.shape)

    def unwhiten(self, images: torch.Tensor) -> torch.Tensor:
        flat = images.reshape(images.shape[0], -1)
        out = flat @ self.inverse.to(flat) + self.mean.to(flat)
        return out.reshape(images.shape)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.transform.numpy().tobytes()).hexdigest()[:16]
