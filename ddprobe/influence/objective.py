"""The objective influence functions see: a model's training loss as a function of a flat parameter vector.

``Objective`` restricts the loss to a parameter subset (``last`` = the classifier head on frozen features, or
``all``) and gives per-example gradients and Hessian-vector products of it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from ..training import loss_fn

ParamSubset = Literal["last", "all"]
Curvature = Literal["hessian", "ggn"]


def head_of(model: nn.Module) -> tuple[str, nn.Module]:
    """The classifier head: ``model.head`` for ddprobe models, else the last ``nn.Linear``."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return "head", model.head
    last = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            last = (name, mod)
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer to use as the 'last' parameter subset")
    return last


class Objective:
    """The mean training loss (plus ``l2/2 |theta|^2``) as a function of a flat vector ``theta`` of parameters.

    ``params="last"``: the classifier head's weights, on features computed once by the frozen body (exact for
    ddprobe models, whose forward is ``head(embed(x))``). ``params="all"``: every trainable parameter, through the
    whole network. The model is evaluated in eval mode. ``inputs(x)`` maps images to what ``logits`` takes.
    """

    def __init__(self, model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, params: ParamSubset = "last",
                 l2: float = 0.0):
        from torch.func import functional_call

        self.model, self.params, self.l2 = model.eval(), params, float(l2)
        self.device = next(model.parameters()).device
        features = params == "last" and hasattr(model, "embed") and isinstance(getattr(model, "head", None),
                                                                                 nn.Linear)
        if params == "last":
            prefix, module = head_of(model)
            named = {n: p for n, p in module.named_parameters() if p.requires_grad}
            self._full_names = {n: f"{prefix}.{n}" if prefix else n for n in named}
        elif params == "all":
            module, named = model, {n: p for n, p in model.named_parameters() if p.requires_grad}
            self._full_names = {n: n for n in named}
        else:
            raise ValueError(f"params must be 'last' or 'all', not {params!r}")
        self.names = list(named)
        self.shapes = [named[n].shape for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.theta0 = torch.cat([named[n].detach().reshape(-1) for n in self.names]).float()
        self.features = features
        # a linear head on frozen features: gradients and Hessian-vector products in closed form (no autograd)
        self.linear = features and isinstance(module, nn.Linear) and self.names[0] == "weight"
        self.bias = "bias" in self.names
        frozen = {**{n: p.detach() for n, p in model.named_parameters()}, **dict(model.named_buffers())}
        if features:
            self._fn = lambda d, x: functional_call(module, d, (x,))
        else:
            full = self._full_names
            self._fn = lambda d, x: functional_call(model, {**frozen, **{full[k]: v for k, v in d.items()}}, (x,))
        self.train_x = self.inputs(train_x)
        self.train_y = train_y.to(self.device)
        self.n = int(self.train_x.shape[0])
        self._graph: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ggn_graph: tuple[torch.Tensor, ...] | None = None

    @property
    def dim(self) -> int:
        return int(self.theta0.numel())

    @torch.no_grad()
    def inputs(self, x: torch.Tensor, batch: int = 1024) -> torch.Tensor:
        if not self.features:
            return x.to(self.device)
        return torch.cat([self.model.embed(x[s:s + batch].to(self.device)) for s in range(0, x.shape[0], batch)])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = torch.split(theta, self.sizes)
        return {n: p.view(s) for n, p, s in zip(self.names, parts, self.shapes, strict=True)}

    def logits(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._fn(self.unflatten(theta), x)

    def loss(self, theta: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        x, y = (self.train_x, self.train_y) if idx is None else (self.train_x[idx], self.train_y[idx])
        out = loss_fn(self.logits(theta, x), y)
        if self.l2:
            out = out + 0.5 * self.l2 * theta.pow(2).sum()
        return out

    def hvp(self, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``H v`` at ``theta0`` for one vector ``[p]`` or columns ``[p, k]``, by double backward.

        The gradient graph of the full training loss is built once and reused; ``idx`` (a minibatch of training
        examples, for stochastic LiSSA) builds a fresh one. A linear head uses the closed form
        ``H v = mean_i J_i^T (diag(p_i) - p_i p_i^T) J_i v`` instead.
        """
        if self.linear:
            return self._linear_hvp(v, idx)
        if idx is None:
            if self._graph is None:
                self._graph = self._grad_graph(None)
            th, g = self._graph
        else:
            th, g = self._grad_graph(idx)
        if v.dim() == 1:
            return torch.autograd.grad(g, th, v, retain_graph=True)[0]
        cols = []
        for s in range(0, v.shape[1], 64):
            block = v[:, s:s + 64].T.contiguous()
            cols.append(torch.autograd.grad(g, th, block, retain_graph=True, is_grads_batched=True)[0].T)
        return torch.cat(cols, 1)

    def ggn_vp(self, v: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """``G v`` (``v``: ``[p]`` or ``[p, k]``), ``G = mean_i J_i^T H_z,i J_i + l2 I`` the Gauss-Newton matrix.

        ``J_i`` is the Jacobian of example ``i``'s logits in the parameters and ``H_z,i = diag(p_i) - p_i p_i^T``
        the Hessian of the cross-entropy in the logits; ``G`` drops the Hessian's term with the network's second
        derivatives, so it is positive semi-definite and a damped solve with it always converges. For a linear head
        on frozen features the logits are linear in the parameters and ``G`` equals the Hessian. Products reuse one
        graph (logits, their gradient and ``J^T u`` for a dummy ``u``): ``J v`` is the derivative of ``J^T u`` in
        ``u``, then ``H_z`` and ``J^T`` by two more backward passes.
        """
        if self.linear:
            return self._linear_hvp(v, idx)
        if idx is None:
            if self._ggn_graph is None:
                self._ggn_graph = self._build_ggn_graph(None)
            th, z, gz, dummy, jt = self._ggn_graph
        else:
            th, z, gz, dummy, jt = self._build_ggn_graph(idx)

        def prod(block: torch.Tensor, batched: bool) -> torch.Tensor:
            jv = torch.autograd.grad(jt, dummy, block, retain_graph=True, is_grads_batched=batched)[0]
            hjv = torch.autograd.grad(gz, z, jv, retain_graph=True, is_grads_batched=batched)[0]
            return torch.autograd.grad(z, th, hjv, retain_graph=True, is_grads_batched=batched)[0]

        if v.dim() == 1:
            return prod(v, False) + self.l2 * v
        cols = [prod(v[:, s:s + 64].T.contiguous(), True).T for s in range(0, v.shape[1], 64)]
        return torch.cat(cols, 1) + self.l2 * v

    def _build_ggn_graph(self, idx: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        x, y = (self.train_x, self.train_y) if idx is None else (self.train_x[idx], self.train_y[idx])
        with torch.enable_grad():
            th = self.theta0.detach().clone().requires_grad_(True)
            z = self.logits(th, x)
            gz = torch.autograd.grad(loss_fn(z, y), z, create_graph=True)[0]
            dummy = torch.zeros_like(z, requires_grad=True)
            jt = torch.autograd.grad(z, th, dummy, create_graph=True)[0]
        return th, z, gz, dummy, jt

    def product(self, curvature: Curvature) -> Callable[..., torch.Tensor]:
        """``v, idx=None -> M v`` for ``M`` the Hessian (``"hessian"``) or the Gauss-Newton matrix (``"ggn"``)."""
        if curvature == "hessian":
            return self.hvp
        if curvature == "ggn":
            return self.ggn_vp
        raise ValueError(f"curvature must be 'hessian' or 'ggn', not {curvature!r}")

    def _linear_parts(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        d = self.train_x.shape[1]
        k = self.shapes[0][0]
        w = theta[: k * d].view(k, d)
        return w, (theta[k * d:] if self.bias else None)

    def _linear_hvp(self, v: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        x = self.train_x if idx is None else self.train_x[idx]
        w, b = self._linear_parts(self.theta0)
        p = torch.softmax(x @ w.T + (b if b is not None else 0), dim=1)  # [n, K]
        cols = v.unsqueeze(1) if v.dim() == 1 else v
        k, d = w.shape
        vw = cols[: k * d].T.reshape(-1, k, d)  # [c, K, d]
        dz = torch.einsum("nd,ckd->cnk", x, vw)
        if self.bias:
            dz = dz + cols[k * d:].T.unsqueeze(1)
        dp = p * dz - p * (p * dz).sum(-1, keepdim=True)  # softmax Jacobian times dz: [c, n, K]
        hw = torch.einsum("cnk,nd->ckd", dp, x).reshape(dp.shape[0], -1) / x.shape[0]
        out = torch.cat([hw, dp.sum(1) / x.shape[0]], 1) if self.bias else hw
        out = out.T + self.l2 * cols
        return out.squeeze(1) if v.dim() == 1 else out

    def _grad_graph(self, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            th = self.theta0.detach().clone().requires_grad_(True)
            return th, torch.autograd.grad(self.loss(th, idx), th, create_graph=True)[0]

    def hessian(self, curvature: Curvature = "hessian") -> torch.Tensor:
        """The explicit ``[p, p]`` Hessian or Gauss-Newton matrix (symmetrized), from ``p`` vmapped products."""
        eye = torch.eye(self.dim, device=self.theta0.device, dtype=self.theta0.dtype)
        product = self.product(curvature)
        cols = [product(eye[:, s:s + 256]) for s in range(0, self.dim, 256)]
        h = torch.cat(cols, 1)
        return 0.5 * (h + h.T)

    def example_grads(self, x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor | None = None,
                      prepared: bool = False) -> torch.Tensor:
        """Per-example gradients ``[b, p]`` of the (unregularized) loss; ``x`` are images unless ``prepared``."""
        th = self.theta0 if theta is None else theta
        xi = x if prepared else self.inputs(x)
        y = y.to(self.device)
        if self.linear:  # (softmax - target) outer features
            w, b = self._linear_parts(th)
            r = torch.softmax(xi @ w.T + (b if b is not None else 0), dim=1)
            r = r - (y if y.dim() == 2 else nn.functional.one_hot(y, r.shape[1]).to(r.dtype))
            gw = (r.unsqueeze(2) * xi.unsqueeze(1)).flatten(1)
            return torch.cat([gw, r], 1) if self.bias else gw
        from torch.func import grad, vmap

        def one(t: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
            return loss_fn(self.logits(t, xx.unsqueeze(0)), yy.unsqueeze(0))

        return vmap(grad(one), in_dims=(None, 0, 0))(th, xi, y).detach()

    def train_grads(self) -> torch.Tensor:
        return self.example_grads(self.train_x, self.train_y, prepared=True)

    def test_grad_chunks(self, x: torch.Tensor, y: torch.Tensor, chunk: int = 256):
        for s in range(0, x.shape[0], chunk):
            yield s, self.example_grads(x[s:s + chunk], y[s:s + chunk])
