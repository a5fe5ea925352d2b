"""Kronecker-factored curvature (K-FAC and EK-FAC) over every ``Linear`` and ``Conv2d`` layer, for influence.

The matrix approximated is the Gauss-Newton matrix of the mean cross-entropy, ``G = mean_i J_i^T H_z,i J_i`` with
``H_z = diag(p) - p p^T``, which for cross-entropy equals the true Fisher. Its expectation over the model's labels
is taken exactly, not sampled: ``H_z = sum_c p_c (p - e_c)(p - e_c)^T``, so each example contributes one
backward pass per class with the output gradient ``sqrt(p_c) (p - e_c)`` (``fisher_seeds``).

For a layer with weight ``W`` (``[out, in]``; a convolution's ``[out, in * kh * kw]`` on unfolded patches, the
bias as an extra input column of ones) and per-example gradient ``G_i = sum_t s_it a_it^T`` (``a``: the layer's
input at position ``t``, ``s``: the gradient at its output), the layer's block of ``G`` is approximated by

* **K-FAC** (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions): ``A (x) S`` with
  ``A = mean_i sum_t a a^T`` and ``S = mean_i E_c mean_t s s^T``. With eigenvectors ``Q_A``, ``Q_S`` and
  eigenvalues ``l_A``, ``l_S`` the block's eigenvalues are ``l_S[k] l_A[l]``.
* **EK-FAC** (George et al. 2018): the same eigenbasis, with the eigenvalues replaced by the exact second moments
  of the gradients in it, ``Lambda[k, l] = mean_i E_c [(Q_S^T G_ic Q_A)[k, l]^2]``, the diagonal of the block of
  ``G`` in the K-FAC eigenbasis (the best diagonal fit in that basis).

The inverse applied to a gradient ``R`` of a layer is ``Q_S ((Q_S^T R Q_A) / (Lambda + l2 + damping)) Q_A^T``.
Layers are independent (block-diagonal). Trainable parameters outside ``Linear`` and ``Conv2d`` layers (the
ConvNet's instance-norm scales and shifts) are not Kronecker-factored: ``others = "skip"`` (default) leaves them
out of the influence, as kronfluence does; ``others = "diagonal"`` preconditions them with the diagonal of ``G``
(exact per-example gradients via ``torch.func``). On the influence benchmark skipping them correlated better with
leave-one-out and cost less (docs/benchmarks.md#influence).

**Damping.** ``damping = "heuristic"`` (default) adds ``damping_scale`` (0.1) x the mean eigenvalue of each layer
(each other parameter tensor) to that layer's eigenvalues, the heuristic kronfluence documents for its
``damping_factor=None``; a number adds that constant everywhere. The recipe's weight decay ``l2`` is part of the
trained objective and is always added on top.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..training import loss_fn
from .objective import ParamSubset, head_of

Kind = Literal["kfac", "ekfac"]
Others = Literal["diagonal", "skip"]


@dataclass
class _Layer:
    name: str
    module: nn.Module
    qa: torch.Tensor | None = None  # [in1, in1] eigenvectors of A
    qs: torch.Tensor | None = None  # [out, out] eigenvectors of S
    eig: torch.Tensor | None = None  # [out, in1] eigenvalues of the block in the (Q_S, Q_A) basis
    damping: float = 0.0

    @property
    def has_bias(self) -> bool:
        return getattr(self.module, "bias", None) is not None

    def weight_matrix(self) -> torch.Tensor:
        """``[out, in1]``: the weight flattened per output unit, the bias as the last column."""
        w = self.module.weight.detach().flatten(1)
        return torch.cat([w, self.module.bias.detach().view(-1, 1)], 1) if self.has_bias else w

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as ``[n, positions, in1]`` (unfolded patches for a convolution, ones appended)."""
        m = self.module
        if isinstance(m, nn.Conv2d):
            a = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride).transpose(1, 2)
        else:
            a = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.has_bias:
            a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], 2)
        return a

    def output_grads(self, g: torch.Tensor) -> torch.Tensor:
        """The gradient at the layer's output as ``[n, positions, out]``."""
        if isinstance(self.module, nn.Conv2d):
            return g.flatten(2).transpose(1, 2)
        return g.reshape(g.shape[0], -1, g.shape[-1])


def _check_layer(name: str, m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        if m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise ValueError(f"K-FAC supports Conv2d layers with groups=1, zero padding given as numbers; layer "
                             f"{name!r} has groups={m.groups}, padding={m.padding!r}, padding_mode={m.padding_mode!r}")


def fisher_seeds(prob: torch.Tensor) -> torch.Tensor:
    """``[K, n, K]`` output gradients ``sqrt(p_c) (p - e_c)``: ``sum_c`` of their outer products is ``H_z``."""
    k = prob.shape[1]
    eye = torch.eye(k, dtype=prob.dtype, device=prob.device)
    return prob.T.sqrt().unsqueeze(2) * (prob.unsqueeze(0) - eye.unsqueeze(1))


class KroneckerFactored:
    """K-FAC / EK-FAC approximation of a model's Gauss-Newton matrix, fitted on data, and its damped inverse.

    ``fit(x, y)`` estimates the factors (and for EK-FAC the corrected eigenvalues) on the training data;
    ``gradients(x, y)`` gives per-example loss gradients per layer; ``precondition(grads)`` applies the damped
    inverse; ``influence(...)`` puts these together in ddprobe's sign and scale (docs/influence.md). The model is
    evaluated in eval mode and never modified.
    """

    def __init__(self, model: nn.Module, *, kind: Kind = "ekfac", params: ParamSubset = "all",
                 others: Others = "skip", damping: float | Literal["heuristic"] = "heuristic",
                 damping_scale: float = 0.1, l2: float = 0.0, chunk: int = 64):
        if kind not in ("kfac", "ekfac"):
            raise ValueError(f"kind must be 'kfac' or 'ekfac', not {kind!r}")
        self.model, self.kind, self.others_mode = model.eval(), kind, others
        self.damping, self.damping_scale, self.l2, self.chunk = damping, float(damping_scale), float(l2), int(chunk)
        self.device = next(model.parameters()).device
        if params == "last":
            prefix, head = head_of(model)
            candidates = {prefix: head}
            trainable = {f"{prefix}.{n}" if prefix else n: p for n, p in head.named_parameters() if p.requires_grad}
        elif params == "all":
            candidates = dict(model.named_modules())
            trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        else:
            raise ValueError(f"params must be 'last' or 'all', not {params!r}")
        self.layers: list[_Layer] = []
        covered: set[str] = set()
        for name, m in candidates.items():
            if isinstance(m, (nn.Linear, nn.Conv2d)) and m.weight.requires_grad:
                _check_layer(name, m)
                self.layers.append(_Layer(name, m))
                own = {f"{name}.{n}" if name else n for n, _ in m.named_parameters(recurse=False)}
                covered |= own
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no Linear or Conv2d layer with trainable weights")
        for layer in self.layers:
            if layer.has_bias and not layer.module.bias.requires_grad:
                raise ValueError(f"layer {layer.name!r}: a trainable weight with a frozen bias is not supported")
        self.other_names = [n for n in trainable if n not in covered]
        self.other_params = {n: trainable[n] for n in self.other_names} if others == "diagonal" else {}
        self.other_eig: dict[str, torch.Tensor] = {}
        self.other_damping: dict[str, float] = {}
        self.fitted = False
        self.fit_seconds = 0.0

    # -- forward passes ------------------------------------------------------------------------------------------
    @contextmanager
    def _captured(self) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        store: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        def hook(name: str, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if name in store:
                raise ValueError(f"layer {name!r} runs more than once in a forward pass; K-FAC needs one use per layer")
            store[name] = (inputs[0], output)

        handles = [layer.module.register_forward_hook(functools.partial(hook, layer.name)) for layer in self.layers]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[torch.Tensor]]:
        """Logits, each layer's activations ``[n, T, in1]`` and outputs (in the graph)."""
        with torch.enable_grad(), self._captured() as store:
            z = self.model(x.to(self.device).detach().requires_grad_(True))
        acts = {layer.name: layer.activations(store[layer.name][0].detach()) for layer in self.layers}
        return z, acts, [store[layer.name][1] for layer in self.layers]

    def _output_grads(self, z: torch.Tensor, outs: list[torch.Tensor], seed: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(z, outs, seed, retain_graph=True)
        return [layer.output_grads(g.detach()) for layer, g in zip(self.layers, grads, strict=True)]

    def _other_grads(self, x: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """``[s, n, p_o]`` per-example gradients of the other parameters for output gradients ``seeds [s, n, K]``."""
        from torch.func import functional_call, grad, vmap

        names = list(self.other_params)
        frozen = {**{n: p.detach() for n, p in self.model.named_parameters()}, **dict(self.model.named_buffers())}

        def one(o: dict[str, torch.Tensor], xi: torch.Tensor, si: torch.Tensor) -> torch.Tensor:
            return (functional_call(self.model, {**frozen, **o}, (xi.unsqueeze(0),))[0] * si).sum()

        s, n = seeds.shape[:2]
        xs = x.to(self.device).unsqueeze(0).expand(s, *x.shape).reshape(s * n, *x.shape[1:])
        g = vmap(grad(one), in_dims=(None, 0, 0))({k: self.other_params[k].detach() for k in names}, xs,
                                                   seeds.reshape(s * n, -1))
        return torch.cat([g[k].reshape(s * n, -1) for k in names], 1).view(s, n, -1)

    def _chunks(self, n: int) -> Iterator[slice]:
        for s in range(0, n, self.chunk):
            yield slice(s, min(n, s + self.chunk))

    # -- fitting ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, x: torch.Tensor, y: torch.Tensor) -> KroneckerFactored:
        """Estimate the factors on ``x`` (labels are not used: the expectation is over the model's own labels)."""
        t0 = time.perf_counter()
        n = int(x.shape[0])
        a_cov = {layer.name: 0.0 for layer in self.layers}
        s_cov = {layer.name: 0.0 for layer in self.layers}
        other_sq: torch.Tensor | float = 0.0
        for sl in self._chunks(n):
            z, acts, outs = self._forward(x[sl])
            seeds = fisher_seeds(torch.softmax(z.detach().double(), 1)).to(z.dtype)
            for layer in self.layers:
                a = acts[layer.name].double()
                a_cov[layer.name] = a_cov[layer.name] + torch.einsum("nte,ntf->ef", a, a)
            for seed in seeds:
                for layer, s in zip(self.layers, self._output_grads(z, outs, seed), strict=True):
                    s = s.double()
                    s_cov[layer.name] = s_cov[layer.name] + torch.einsum("ntd,nte->de", s, s) / s.shape[1]
            if self.other_params:
                other_sq = other_sq + self._other_grads(x[sl], seeds).double().pow(2).sum((0, 1))
        for layer in self.layers:
            la, qa = torch.linalg.eigh(a_cov[layer.name] / n)
            ls, qs = torch.linalg.eigh(s_cov[layer.name] / n)
            layer.qa, layer.qs = qa, qs
            layer.eig = ls.clamp_min(0).unsqueeze(1) * la.clamp_min(0).unsqueeze(0)
        if self.kind == "ekfac":
            self._correct_eigenvalues(x)
        for layer in self.layers:
            layer.damping = self._damping(layer.eig)
            layer.qa, layer.qs, layer.eig = (t.to(torch.float32) for t in (layer.qa, layer.qs, layer.eig))
        if self.other_params:
            sizes = [p.numel() for p in self.other_params.values()]
            for name, part in zip(self.other_params, torch.split(torch.as_tensor(other_sq) / n, sizes), strict=True):
                self.other_eig[name] = part.float()
                self.other_damping[name] = self._damping(part)
        self.fitted = True
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _correct_eigenvalues(self, x: torch.Tensor) -> None:
        """EK-FAC: ``Lambda = mean_i E_c (Q_S^T G_ic Q_A)^2`` from per-example gradients rotated into the basis."""
        n = int(x.shape[0])
        lam = {layer.name: 0.0 for layer in self.layers}
        for sl in self._chunks(n):
            z, acts, outs = self._forward(x[sl])
            seeds = fisher_seeds(torch.softmax(z.detach().double(), 1)).to(z.dtype)
            rot_a = {layer.name: acts[layer.name].double() @ layer.qa for layer in self.layers}
            for seed in seeds:
                for layer, s in zip(self.layers, self._output_grads(z, outs, seed), strict=True):
                    v = torch.einsum("ntd,nte->nde", s.double() @ layer.qs, rot_a[layer.name])
                    lam[layer.name] = lam[layer.name] + v.pow(2).sum(0)
        for layer in self.layers:
            layer.eig = lam[layer.name] / n

    def _damping(self, eig: torch.Tensor) -> float:
        if self.damping == "heuristic":
            return self.damping_scale * float(eig.mean())
        return float(self.damping)

    # -- gradients and the inverse ------------------------------------------------------------------------------
    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example gradients of the (unregularized) loss: ``{layer: [n, out, in1], "others": [n, p_o]}``."""
        out: dict[str, list[torch.Tensor]] = {layer.name: [] for layer in self.layers}
        out["others"] = []
        y = y.to(self.device)
        for sl in self._chunks(int(x.shape[0])):
            z, acts, outs = self._forward(x[sl])
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                seed = torch.autograd.grad(loss_fn(zz, y[sl], reduction="none").sum(), zz)[0]
            for layer, s in zip(self.layers, self._output_grads(z, outs, seed), strict=True):
                out[layer.name].append(torch.einsum("ntd,nte->nde", s, acts[layer.name]))
            if self.other_params:
                out["others"].append(self._other_grads(x[sl], seed.unsqueeze(0))[0])
        return {k: torch.cat(v) for k, v in out.items() if v}

    def regularizer_gradient(self) -> dict[str, torch.Tensor]:
        """``l2 theta`` in the layout of ``gradients`` (one row)."""
        out = {layer.name: self.l2 * layer.weight_matrix().unsqueeze(0) for layer in self.layers}
        if self.other_params:
            out["others"] = self.l2 * torch.cat([p.detach().flatten() for p in self.other_params.values()]).view(1, -1)
        return out

    def precondition(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``(G_approx + l2 I + damping)^-1`` applied to each row of ``grads`` (the layout of ``gradients``)."""
        if not self.fitted:
            raise RuntimeError("call fit(x, y) first")
        out = {}
        for layer in self.layers:
            g = grads[layer.name]
            v = layer.qs.T @ g @ layer.qa
            out[layer.name] = layer.qs @ (v / (layer.eig + self.l2 + layer.damping)) @ layer.qa.T
        if "others" in grads:
            inv = torch.cat([1.0 / (self.other_eig[k] + self.l2 + self.other_damping[k]) for k in self.other_params])
            out["others"] = grads["others"] * inv
        return out

    @staticmethod
    def dot(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[n_a, n_b]`` inner products of two sets of per-example gradients (summed over layers)."""
        total = None
        for k in a:
            part = a[k].flatten(1) @ b[k].flatten(1).T
            total = part if total is None else total + part
        assert total is not None
        return total

    def influence(self, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                  test_y: torch.Tensor, test_chunk: int = 256) -> torch.Tensor:
        """``[n, m]`` predicted ``loss_without_i - loss_full = g_test_j . G^-1 (g_i + l2 theta) / (n - 1)``.

        Fits the factors on ``train_x`` first when ``fit`` was not called.
        """
        if not self.fitted:
            self.fit(train_x, train_y)
        reg = self.regularizer_gradient()
        removal = {k: g + reg[k] for k, g in self.gradients(train_x, train_y).items()}
        pre = self.precondition(removal)
        cols = []
        for s in range(0, int(test_x.shape[0]), test_chunk):
            cols.append(self.dot(pre, self.gradients(test_x[s:s + test_chunk], test_y[s:s + test_chunk])).cpu())
        n = int(train_x.shape[0])
        return torch.cat(cols, 1) / max(1, n - 1)

    def describe(self) -> dict[str, Any]:
        """What was approximated, for a backend's ``info``."""
        layers = [{"layer": layer.name, "type": type(layer.module).__name__,
                   "shape": list(layer.eig.shape) if layer.eig is not None else None,
                   "mean_eigenvalue": float(layer.eig.mean()) if layer.eig is not None else None,
                   "damping": layer.damping} for layer in self.layers]
        return {"kind": self.kind, "curvature": "ggn", "layers": layers,
                "damping": self.damping if self.damping == "heuristic" else float(self.damping),
                "damping_scale": self.damping_scale if self.damping == "heuristic" else None,
                "others": self.others_mode, "other_params": self.other_names,
                "kfac_params": sum(int(layer.module.weight.numel()) + (int(layer.module.bias.numel())
                                                                        if layer.has_bias else 0)
                                   for layer in self.layers),
                "fit_seconds": self.fit_seconds}
