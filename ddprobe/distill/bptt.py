"""BPTT: backpropagation through an unrolled momentum-SGD inner loop (RTP's baseline), paper-methods C.1.

The images are free parameters. Each iteration trains a fresh network for ``inner_steps`` momentum-SGD steps on
synthetic minibatches, measures the cross-entropy of the final network on a real batch, and computes the exact
gradient of that loss with respect to the images by reverse-mode replay: only the parameter vector of each step
is stored (``inner_steps x P`` numbers, never the autograd graph of the whole unroll). Going backwards, each
step's gradient is recomputed with a graph and a Hessian-vector product carries the adjoint to the parameters and
the pixels of that step's minibatch:

    forward:  g_t = grad l(theta_t, x_t);  v_{t+1} = mu v_t + g_t;  theta_{t+1} = theta_t - lr v_{t+1}
    backward: a_v -= lr a_theta;  a_theta += H_theta(g_t) a_v;  dL/dx_t += H_x(g_t) a_v;  a_v *= mu

The image gradient is clipped to norm ``clip`` and the images take an SGD-momentum step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .common import ClassSampler, FlatModel, Matching


def sample_batches(num_classes: int, ipc: int, per_class: int, steps: int, gen: torch.Generator,
                   device: Any) -> list[torch.Tensor]:
    """Indices of ``per_class`` synthetic images of every class, drawn without replacement, for each step."""
    out = []
    for _ in range(steps):
        parts = [c * ipc + torch.randperm(ipc, generator=gen)[:per_class] for c in range(num_classes)]
        out.append(torch.cat(parts).sort().values.to(device))
    return out


def unroll(fmodel: FlatModel, theta0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
           batches: list[torch.Tensor], lr: float, momentum: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Forward unroll without a graph; returns the final parameters and the parameters before each step."""
    theta, v = theta0.detach(), torch.zeros_like(theta0)
    thetas = []
    x_all = images.detach()
    for idx in batches:
        thetas.append(theta)
        th = theta.clone().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(F.cross_entropy(fmodel(th, x_all[idx]), labels[idx]), th)[0]
        v = momentum * v + g
        theta = (theta - lr * v).detach()
    return theta, thetas


def replay_gradient(fmodel: FlatModel, thetas: list[torch.Tensor], a_theta: torch.Tensor, images: torch.Tensor,
                    labels: torch.Tensor, batches: list[torch.Tensor], lr: float, momentum: float) -> torch.Tensor:
    """d(outer loss)/d(images) by reverse-mode replay, given ``a_theta`` = d(outer loss)/d(theta_T)."""
    leaf = images.detach().requires_grad_(True)
    grad = torch.zeros_like(leaf)
    a_v = torch.zeros_like(a_theta)
    for t in range(len(batches) - 1, -1, -1):
        idx = batches[t]
        a_v = a_v - lr * a_theta
        th = thetas[t].clone().requires_grad_(True)
        with torch.enable_grad():
            g = torch.autograd.grad(F.cross_entropy(fmodel(th, leaf[idx]), labels[idx]), th, create_graph=True)[0]
            h_theta, h_x = torch.autograd.grad(g, [th, leaf], grad_outputs=a_v)
        grad += h_x
        a_theta = a_theta + h_theta
        a_v = momentum * a_v
    return grad


def outer_loss(fmodel: FlatModel, theta: torch.Tensor, xr: torch.Tensor, yr: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(fmodel(theta, xr), yr)


def unrolled_loss(fmodel: FlatModel, theta0: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
                  batches: list[torch.Tensor], lr: float, momentum: float, xr: torch.Tensor,
                  yr: torch.Tensor) -> torch.Tensor:
    """The same outer loss with the whole unroll in one autograd graph (reference for tests; memory ~ steps)."""
    theta, v = theta0.detach().clone().requires_grad_(True), torch.zeros_like(theta0)
    for idx in batches:
        g = torch.autograd.grad(F.cross_entropy(fmodel(theta, images[idx]), labels[idx]), theta,
                                create_graph=True)[0]
        v = momentum * v + g
        theta = theta - lr * v
    return outer_loss(fmodel, theta, xr, yr)


class BPTTRun(Matching):
    name = "bptt"

    def __init__(self, real, ipc, options, ctx, model):
        super().__init__(real, ipc, options, ctx, model)
        self.sampler = ClassSampler(real, self.device)
        self.learnable_images(noise="xavier")
        self.per_class = min(options.batch_per_class or ipc, ipc)

    def loss_and_grad(self, it: Any) -> tuple[float, torch.Tensor]:
        o = self.options
        net = self.net(it)
        net.train()
        fm = FlatModel(net)
        gen = self.rng("iter", it)
        batches = sample_batches(self.real.num_classes, self.ipc, self.per_class, o.inner_steps, gen, self.device)
        theta_T, thetas = unroll(fm, fm.flat(), self.images, self.labels, batches, o.inner_lr, o.inner_momentum)
        xr, yr = self.sampler.sample_all(o.real_per_class, gen)
        th = theta_T.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = outer_loss(fm, th, xr, yr)
            a_theta = torch.autograd.grad(loss, th)[0]
        grad = replay_gradient(fm, thetas, a_theta, self.images, self.labels, batches, o.inner_lr,
                               o.inner_momentum)
        return float(loss.detach()), grad

    def iteration(self, it: int) -> float:
        loss, grad = self.loss_and_grad(it)
        opt = self.optimizers["images"]
        opt.zero_grad(set_to_none=True)
        self.images.grad = grad
        if self.options.clip > 0:
            torch.nn.utils.clip_grad_norm_([self.images], self.options.clip)
        opt.step()
        return loss

    def objective(self, seeds: int = 4) -> float:
        return sum(self.loss_and_grad(f"eval{s}")[0] for s in range(seeds)) / seeds


def distill(real, ipc: int, options, ctx, model):
    return BPTTRun(real, ipc, options, ctx, model).run(options.iterations)
