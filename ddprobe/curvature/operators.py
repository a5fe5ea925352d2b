"""Curvature operators: Hessian and Gauss-Newton products of a model's loss, an explicit matrix, probes."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import nn

from ..nets import batchnorm_layers


class CurvatureOperator(Protocol):
    """A symmetric linear operator on flat vectors of length ``size``; ``matmat`` takes and returns ``[b, size]``."""

    size: int
    device: torch.device
    dtype: torch.dtype
    products: int

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor: ...


def rademacher(count: int, size: int, generator: torch.Generator | None, device: Any = "cpu",
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``count`` Rademacher (+1/-1) vectors of length ``size``, drawn on CPU from ``generator`` (device independent)."""
    bits = torch.randint(0, 2, (count, size), generator=generator, dtype=torch.int8)
    return (bits.to(dtype) * 2 - 1).to(device)


def _normal(count: int, size: int, generator: torch.Generator | None, device: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(count, size, generator=generator, dtype=torch.float64).to(device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------- state guard
@contextlib.contextmanager
def preserved_state(model: nn.Module, restore_buffers: bool = False) -> Iterator[None]:
    """Restore every module's train/eval flag and every parameter's ``.grad`` on exit.

    With ``restore_buffers``, the block runs on clones of all buffers (BatchNorm running statistics may be
    updated by a train-mode forward) and the original buffer tensors are put back untouched afterwards; the clones
    stay referenced by any graph built in the block, so that graph stays valid.
    """
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.grad) for p in model.parameters()]
    buffers = []
    if restore_buffers:
        for m in model.modules():
            for name, b in list(m._buffers.items()):
                if b is not None:
                    buffers.append((m, name, b))
                    m._buffers[name] = b.detach().clone()
    try:
        yield
    finally:
        for m, training in modes:
            m.train(training)
        for p, g in grads:
            p.grad = g
        for m, name, b in buffers:
            m._buffers[name] = b


# ------------------------------------------------------------------------------------------------------ operators
class MatrixOperator:
    """An explicit symmetric matrix as a curvature operator (tests, and small problems)."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.size = int(matrix.shape[0])
        self.device = matrix.device
        self.dtype = matrix.dtype
        self.products = 0

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        self.products += int(vectors.shape[0])
        return vectors.to(self.dtype) @ self.matrix


LossFn = Callable[..., torch.Tensor]
BATCHED_MAX_EXAMPLES = 128  # CPU: batched blocks of products up to this chunk size (benchmarks/bench_hvp_blocks.py)


def _default_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    from ..training import loss_fn

    return loss_fn(logits, labels, reduction)


@dataclass
class _Chunk:
    x: torch.Tensor
    y: torch.Tensor
    weight: float
    graph: tuple | None = None


class HessianOperator:
    """Products with the Hessian (``kind="hessian"``) or the Gauss-Newton matrix (``kind="ggn"``) of a model's loss.

    The loss is the mean of ``loss(logits, labels)`` over ``data`` (``LabeledData`` or an ``(images, labels)``
    pair), or over a seeded subsample of ``subsample`` examples drawn from ``generator``. ``batch_size`` bounds the
    examples in one forward pass (``None``: all at once); results are exactly the full-data products.

    ``params``: the parameters to differentiate (default: all that require grad), flattened in order.
    ``bn``: ``"eval"`` or ``"batch"`` (see the module docstring). ``batched``: issue blocks of products with
    ``is_grads_batched`` (``"auto"``: on CUDA, and on CPU for chunks of at most ``BATCHED_MAX_EXAMPLES``
    examples; the module docstring says why). ``retain``: keep each chunk's gradient graph between products
    (``"auto"``: when the data is one chunk).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        loss: LossFn | None = None,
        kind: Literal["hessian", "ggn"] = "hessian",
        batch_size: int | None = None,
        subsample: int | None = None,
        generator: torch.Generator | None = None,
        params: Sequence[torch.Tensor] | None = None,
        bn: Literal["eval", "batch"] = "eval",
        batched: bool | Literal["auto"] = "auto",
        retain: bool | Literal["auto"] = "auto",
    ):
        if kind not in ("hessian", "ggn"):
            raise ValueError(f"kind must be 'hessian' or 'ggn', not {kind!r}")
        if bn not in ("eval", "batch"):
            raise ValueError(f"bn must be 'eval' or 'batch', not {bn!r}")
        self.model = model
        self.kind = kind
        self.bn = bn
        self.loss = loss or _default_loss
        self.params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
        if not self.params:
            raise ValueError("no parameters require grad")
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.size = sum(self.numels)
        self.device = self.params[0].device
        self.dtype = self.params[0].dtype
        self.products = 0

        images, labels = (data.images, data.labels) if hasattr(data, "images") else data
        n = int(images.shape[0])
        if subsample is not None and subsample < n:
            idx = torch.randperm(n, generator=generator)[:subsample].sort().values
            images, labels = images[idx.to(images.device)], labels[idx.to(labels.device)]
            n = subsample
        if n == 0:
            raise ValueError("no examples")
        self.num_examples = n
        self.images, self.labels = images, labels  # the examples of the loss (after subsampling), for minibatches
        bs = n if batch_size is None else max(1, min(int(batch_size), n))
        self.chunks = [
            _Chunk(images[s : s + bs], labels[s : s + bs], min(bs, n - s) / n) for s in range(0, n, bs)
        ]
        if bn == "batch" and len(self.chunks) > 1 and batchnorm_layers(model):
            raise ValueError(
                "bn='batch' couples the examples of a batch, so the Hessian over several chunks is not the Hessian "
                "of one loss; use bn='eval' or batch_size=None"
            )
        if batched == "auto":
            batched = self.device.type == "cuda" or bs <= BATCHED_MAX_EXAMPLES
        self.batched = bool(batched)
        self.retain = (len(self.chunks) == 1) if retain == "auto" else bool(retain)

    # -- flat <-> per-parameter
    def _unflatten(self, flat: torch.Tensor) -> list[torch.Tensor]:
        lead = flat.shape[:-1]
        return [t.reshape(*lead, *s) for t, s in zip(torch.split(flat, self.numels, dim=-1), self.shapes, strict=True)]

    def _flatten(self, tensors: Sequence[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
        parts = [
            (torch.zeros(*lead, n, device=self.device, dtype=self.dtype) if t is None else t.reshape(*lead, n))
            for t, n in zip(tensors, self.numels, strict=True)
        ]
        return torch.cat(parts, dim=-1)

    # -- graphs
    def _build(self, chunk: _Chunk) -> tuple:
        """The graph a product differentiates through, built under the BN policy with state restored."""
        with preserved_state(self.model, restore_buffers=self.bn == "batch"):
            self.model.train(self.bn == "batch")
            x = chunk.x.to(self.device)
            y = chunk.y.to(self.device)
            with torch.enable_grad():
                logits = self.model(x)
                loss = self.loss(logits, y, "mean") * chunk.weight
                if self.kind == "hessian":
                    grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                    used = [(g, p) for g, p in zip(grads, self.params, strict=True) if g is not None]
                    return ("hessian", [g for g, _ in used], [p for _, p in used],
                            [i for i, g in enumerate(grads) if g is not None])
                # Gauss-Newton: G v = J^T H_z J v with H_z the Hessian of the loss in the logits z.
                gz = torch.autograd.grad(loss, logits, create_graph=True)[0]
                dummy = torch.zeros_like(logits, requires_grad=True)
                jt = torch.autograd.grad(logits, self.params, grad_outputs=dummy, create_graph=True,
                                         allow_unused=True)
                used_idx = [i for i, g in enumerate(jt) if g is not None]
                return ("ggn", logits, gz, dummy, [jt[i] for i in used_idx], [self.params[i] for i in used_idx],
                        used_idx)

    def _product(self, graph: tuple, vectors: list[torch.Tensor], batched: bool,
                 only: int | None = None) -> list[torch.Tensor | None]:
        """Per-parameter products; with ``only``, the diagonal block of parameter ``only`` (others ``None``)."""
        out: list[torch.Tensor | None] = [None] * len(self.params)
        idx = graph[-1]
        keep = list(range(len(idx))) if only is None else [j for j, i in enumerate(idx) if i == only]
        if not keep:  # the parameter does not reach the loss: its block is zero
            return out
        if graph[0] == "hessian":
            _, grads, params, _ = graph
            res = torch.autograd.grad([grads[j] for j in keep], [params[j] for j in keep],
                                      grad_outputs=[vectors[idx[j]] for j in keep], retain_graph=True,
                                      is_grads_batched=batched, allow_unused=True)
        else:
            _, logits, gz, dummy, jt, params, _ = graph
            jv = torch.autograd.grad([jt[j] for j in keep], dummy, grad_outputs=[vectors[idx[j]] for j in keep],
                                     retain_graph=True, is_grads_batched=batched)[0]
            hjv = torch.autograd.grad(gz, logits, grad_outputs=jv, retain_graph=True, is_grads_batched=batched)[0]
            res = torch.autograd.grad(logits, [params[j] for j in keep], grad_outputs=hjv, retain_graph=True,
                                      is_grads_batched=batched, allow_unused=True)
        for j, r in zip(keep, res, strict=True):
            out[idx[j]] = r
        return out

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        return self.matmat(vector.reshape(1, -1))[0]

    def matmat(self, vectors: torch.Tensor) -> torch.Tensor:
        """``[b, size] -> [b, size]``: one product per row."""
        return self._products(vectors, None)

    def block_matmat(self, index: int, vectors: torch.Tensor) -> torch.Tensor:
        """``[b, numel] -> [b, numel]``: products with the diagonal block of parameter ``index`` (H_pp V).

        Autograd visits only the part of the graph between that parameter's gradient and the parameter, so the
        blocks of late layers cost a small fraction of a full product (the last layer's about 1 %, measured on the
        benchmark ConvNet). Each row counts as one product.
        """
        return self._products(vectors, index)

    def _products(self, vectors: torch.Tensor, only: int | None) -> torch.Tensor:
        """Full products (``only=None``) or products with parameter ``only``'s diagonal block, summed over chunks."""
        vectors = vectors.to(device=self.device, dtype=self.dtype)
        b = int(vectors.shape[0])

        def split(flat: torch.Tensor) -> list[torch.Tensor]:
            if only is None:
                return self._unflatten(flat)
            parts = [flat.new_empty(0)] * len(self.params)  # only parameter ``only``'s part is read
            parts[only] = flat.reshape(*flat.shape[:-1], *self.shapes[only])
            return parts

        def join(res: list[torch.Tensor | None], lead: tuple[int, ...]) -> torch.Tensor:
            if only is None:
                return self._flatten(res, lead)
            r = res[only]
            return torch.zeros(*lead, self.numels[only], device=self.device, dtype=self.dtype) if r is None \
                else r.reshape(*lead, -1)

        total = torch.zeros(b, self.size if only is None else self.numels[only], device=self.device, dtype=self.dtype)
        with preserved_state(self.model):
            for chunk in self.chunks:
                graph = chunk.graph or self._build(chunk)
                if self.retain:
                    chunk.graph = graph
                if self.batched and b > 1:
                    total += join(self._product(graph, split(vectors), True, only), (b,))
                else:
                    for j in range(b):
                        total[j] += join(self._product(graph, split(vectors[j]), False, only), ())
                del graph
        self.products += b
        return total.detach()

    def gradient(self) -> torch.Tensor:
        """The flat loss gradient (side-effect free), e.g. to check the operator's loss."""
        total = torch.zeros(self.size, device=self.device, dtype=self.dtype)
        with preserved_state(self.model, restore_buffers=self.bn == "batch"):
            self.model.train(self.bn == "batch")
            for chunk in self.chunks:
                with torch.enable_grad():
                    loss = self.loss(self.model(chunk.x.to(self.device)), chunk.y.to(self.device), "mean")
                    g = torch.autograd.grad(loss * chunk.weight, self.params, allow_unused=True)
                total += self._flatten(g, ())
        return total

    def close(self) -> None:
        """Free the retained graphs (they also go when the operator is garbage collected)."""
        for chunk in self.chunks:
            chunk.graph = None


def dense_matrix(op: CurvatureOperator, block: int = 64) -> torch.Tensor:
    """The explicit ``[size, size]`` matrix by products with the identity (small models only)."""
    n = op.size
    rows = []
    for s in range(0, n, block):
        eye = torch.zeros(min(block, n - s), n, device=op.device, dtype=op.dtype)
        eye[torch.arange(eye.shape[0]), torch.arange(s, s + eye.shape[0])] = 1
        rows.append(op.matmat(eye))
    return torch.cat(rows)
