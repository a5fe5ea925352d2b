"""ddprobe.curvature against explicit Hessians (torch.autograd.functional.hessian) and a closed form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from ddprobe.curvature import (
    Deflation,
    HessianOperator,
    MatrixOperator,
    auto_trace,
    dense_matrix,
    diagonal,
    exact_trace,
    hutchinson,
    hutchpp,
    lanczos,
    minibatch_trace,
    spectral_density,
    subspace_overlap,
)
from ddprobe.training import loss_fn


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_data(n=40, d=6, classes=3, seed=0):
    g = gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def tiny_mlp(d=6, hidden=5, classes=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()


def explicit_hessian(model, x, y):
    """The reference: torch.autograd.functional.hessian of the mean loss in the flattened parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        parts = dict(zip(names, [t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True)], strict=True))
        return loss_fn(functional_call(model, parts, (x,)), y)

    return torch.autograd.functional.hessian(f, flat0)


def test_logistic_regression_closed_form():
    """Multinomial logistic regression: H = mean_n (diag p - p pᵀ) ⊗ x̃ x̃ᵀ, and GGN = Hessian (linear model)."""
    x, y = tiny_data(n=30, d=4, classes=3)
    model = nn.Linear(4, 3).double()
    p = torch.softmax(model(x), 1).detach()
    xt = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # [W | b] per class row
    blocks = torch.zeros(3 * 5, 3 * 5, dtype=torch.float64)
    for n in range(len(x)):
        a = torch.diag(p[n]) - torch.outer(p[n], p[n])
        blocks += torch.kron(a, torch.outer(xt[n], xt[n]))
    blocks /= len(x)
    # reorder from per-class [w_c, b_c] to the parameter order [W (3x4), b (3)]
    order = [c * 5 + j for c in range(3) for j in range(4)] + [c * 5 + 4 for c in range(3)]
    closed = blocks[order][:, order]
    h = dense_matrix(HessianOperator(model, (x, y)))
    torch.testing.assert_close(h, closed, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dense_matrix(HessianOperator(model, (x, y), kind="ggn")), closed, rtol=1e-10,
                               atol=1e-12)


def test_operator_matches_explicit_hessian_full_chunked_and_subsample():
    x, y = tiny_data()
    model = tiny_mlp()
    ref = explicit_hessian(model, x, y)
    torch.testing.assert_close(dense_matrix(HessianOperator(model, (x, y))), ref, rtol=1e-9, atol=1e-11)
    chunked = HessianOperator(model, (x, y), batch_size=7)
    assert len(chunked.chunks) == 6 and not chunked.retain
    torch.testing.assert_close(dense_matrix(chunked), ref, rtol=1e-9, atol=1e-11)
    looped = HessianOperator(model, (x, y), batched=False)  # 40 examples: "auto" batches on CPU too
    torch.testing.assert_close(dense_matrix(looped), ref, rtol=1e-9, atol=1e-11)
    sub = HessianOperator(model, (x, y), subsample=15, generator=gen(3))
    idx = torch.randperm(40, generator=gen(3))[:15].sort().values
    torch.testing.assert_close(dense_matrix(sub), explicit_hessian(model, x[idx], y[idx]), rtol=1e-9, atol=1e-11)


def test_batched_auto_follows_the_chunk_size_on_cpu():
    from ddprobe.curvature import BATCHED_MAX_EXAMPLES

    x, y = tiny_data(n=300)
    model = tiny_mlp()
    assert HessianOperator(model, (x[:BATCHED_MAX_EXAMPLES], y[:BATCHED_MAX_EXAMPLES])).batched
    assert not HessianOperator(model, (x, y)).batched
    assert HessianOperator(model, (x, y), batch_size=100).batched  # chunks of 100
    assert not HessianOperator(model, (x[:10], y[:10]), batched=False).batched


def test_ggn_is_jt_hz_j():
    x, y = tiny_data(n=12)
    model = tiny_mlp()
    params = dict(model.named_parameters())
    flat0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
    shapes, sizes = [p.shape for p in params.values()], [p.numel() for p in params.values()]

    def logits(flat):
        parts = [t.reshape(s) for t, s in zip(flat.split(sizes), shapes, strict=True)]
        return functional_call(model, dict(zip(params, parts, strict=True)), (x,))

    jac = torch.autograd.functional.jacobian(logits, flat0)  # [N, C, P]
    z = logits(flat0).detach()
    hz = torch.autograd.functional.hessian(lambda zz: loss_fn(zz, y), z)  # [N, C, N, C]
    n, c = z.shape
    j2 = jac.reshape(n * c, -1)
    ref = j2.T @ hz.reshape(n * c, n * c) @ j2
    got = dense_matrix(HessianOperator(model, (x, y), kind="ggn"))
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-11)
    batched = dense_matrix(HessianOperator(model, (x, y), kind="ggn", batched=True, batch_size=5))
    torch.testing.assert_close(batched, ref, rtol=1e-9, atol=1e-11)
    assert torch.linalg.eigvalsh(got).min() > -1e-10  # PSD


class _WithUnused(nn.Module):
    """A small conv net with a parameter the loss never reaches (its Hessian block is zero)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(3, 3), nn.Tanh(), nn.Flatten(),
                                  nn.Linear(3 * 16, 4)).double()
        self.unused = nn.Linear(2, 2).double()

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
@pytest.mark.parametrize("layout", [{}, {"batched": False}, {"batch_size": 7}, {"batch_size": 7, "batched": True}])
def test_block_products_and_diagonal_match_the_explicit_matrix(kind, layout):
    model = _WithUnused()
    g = gen(4)
    x, y = torch.randn(30, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (30,), generator=g)
    ref = dense_matrix(HessianOperator(model, (x, y), kind=kind))
    if kind == "hessian":
        torch.testing.assert_close(ref, explicit_hessian(model, x, y), rtol=1e-9, atol=1e-11)
    op = HessianOperator(model, (x, y), kind=kind, **layout)
    start = 0
    for i, n in enumerate(op.numels):
        v = torch.randn(3, n, generator=g, dtype=torch.float64)
        torch.testing.assert_close(op.block_matmat(i, v), v @ ref[start : start + n, start : start + n],
                                   rtol=1e-9, atol=1e-11)
        start += n
    op.products = 0
    torch.testing.assert_close(diagonal(op, block=5), ref.diagonal(), rtol=1e-9, atol=1e-11)
    assert op.products == op.size
    est = exact_trace(op)
    assert est.value == pytest.approx(float(ref.trace()), rel=1e-10) and est.stderr == 0 and est.converged
    assert est.products == op.size and est.method.startswith("exact")


def test_estimators_ask_abandon_once_and_stop_unconverged():
    r = torch.randn(50, 50, generator=gen(1), dtype=torch.float64)
    a = r + r.T  # off-diagonal mass: Rademacher samples spread
    calls = []

    def abandon(seconds, used):
        calls.append((seconds, used))
        return True

    est = hutchinson(MatrixOperator(a), rtol=1e-6, min_samples=12, generator=gen(0), abandon=abandon)
    assert len(calls) == 1 and calls[0][1] == 12 and calls[0][0] > 0
    assert est.products == 12 and not est.converged
    calls.clear()
    est = hutchpp(MatrixOperator(a), rtol=1e-6, sketch=3,
                  min_samples=10, generator=gen(0), abandon=lambda s, u: calls.append((s, u)) or False,
                  max_products=40)
    assert len(calls) == 1 and calls[0][1] == 16 and est.products == 40  # asked once, kept going when told no


def test_auto_trace_takes_the_exact_trace_when_the_estimate_would_take_longer():
    x, y = tiny_data(n=60, d=8)
    model = tiny_mlp(d=8, hidden=10)
    true = float(torch.trace(explicit_hessian(model, x, y)))
    op = HessianOperator(model, (x, y))
    # 1e-5 relative standard error would take millions of probes; the exact trace takes op.size (= 123) products
    est = auto_trace(op, rtol=1e-5, max_products=2000, generator=gen(0))
    assert est.method.startswith("exact") and "hutch++" in est.method and est.stderr == 0
    assert est.value == pytest.approx(true, rel=1e-10)
    assert est.products == op.products > op.size  # the abandoned samples and timing products are counted
    # without room in the budget, or when not allowed, it stays stochastic
    for kw in ({"max_products": op.size}, {"allow_exact": False, "max_products": 300}):
        est = auto_trace(HessianOperator(model, (x, y)), rtol=1e-5, generator=gen(0), **kw)
        assert est.method == "hutch++" and not est.converged
    # large data: the stochastic route is the minibatch estimator, which a loose target leaves in place
    est = auto_trace(HessianOperator(model, (x, y)), rtol=0.5, minibatch_size=10, max_products=400, generator=gen(0))
    assert est.method.startswith("minibatch") and est.converged
    est = auto_trace(HessianOperator(model, (x, y)), rtol=1e-5, minibatch_size=10, max_products=2000,
                     generator=gen(0))
    assert est.method.startswith("exact") and "minibatch" in est.method and est.value == pytest.approx(true, rel=1e-10)


def test_ritz_vectors_deflate_the_trace_exactly_and_cut_its_variance():
    x, y = tiny_data(n=60, d=8)
    model = tiny_mlp(d=8, hidden=10)
    h = explicit_hessian(model, x, y)
    true = float(torch.trace(h))
    op = HessianOperator(model, (x, y))
    eig = lanczos(op, 4, tol=1e-3, generator=gen(0))
    defl = Deflation.from_eigen(eig)
    v = defl.vectors
    # the Ritz values are the Ritz vectors' exact share of the trace, and the directions are orthonormal
    assert defl.trace == pytest.approx(float(torch.trace(v @ h @ v.T)), rel=1e-9)
    torch.testing.assert_close(v @ v.T, torch.eye(4, dtype=v.dtype), rtol=0, atol=1e-9)
    before = op.products
    est = hutchpp(op, rtol=0.01, max_products=2000, generator=gen(1), deflate=defl)
    assert est.method == "hutch++[deflated]" and est.exact_part == defl.trace
    assert est.products == op.products - before == len(est.samples)  # no sketch products
    assert abs(est.value - true) <= 3 * est.stderr
    rest = h - v.T @ (v @ h @ v.T) @ v
    plain = hutchinson(op, rtol=None, max_products=200, generator=gen(2))
    assert np.var(est.samples) < np.var(plain.samples)  # the large eigenvalues no longer spread the samples
    assert float(np.mean(est.samples)) == pytest.approx(float(torch.trace(rest)), abs=4 * est.stderr)
    mb = minibatch_trace(model, (x, y), batch_size=15, rtol=0.02, max_products=4000, generator=gen(3), deflate=defl)
    assert "deflated" in mb.method and mb.exact_part == defl.trace
    assert abs(mb.value - true) <= 3 * mb.stderr


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_trace_within_stated_standard_error(method):
    x, y = tiny_data(n=60, d=8)
    model = tiny_mlp(d=8, hidden=10)
    true = float(torch.trace(explicit_hessian(model, x, y)))
    fn = hutchinson if method == "hutchinson" else hutchpp
    kwargs = {} if method == "hutchinson" else {"sketch": 8}
    est = fn(HessianOperator(model, (x, y)), rtol=0.05, max_products=3000, generator=gen(1), **kwargs)
    assert est.converged and est.rel_stderr <= 0.05
    assert abs(est.value - true) <= 4 * est.stderr
    assert est.products == (len(est.samples) + (16 if method == "hutchpp" else 0))


def test_hutchpp_is_exact_for_low_rank():
    g = gen(0)
    u = torch.randn(100, 4, generator=g, dtype=torch.float64)
    a = u @ torch.diag(torch.tensor([5.0, 3.0, 2.0, 1.0], dtype=torch.float64)) @ u.T
    est = hutchpp(MatrixOperator(a), sketch=6, rtol=0.01, generator=gen(1))
    assert est.value == pytest.approx(float(a.trace()), rel=1e-9)


def test_pyhessian_01_stopping_quirk():
    """PyHessian 0.1 divides by the running mean without abs(): a negative first sample stops after two probes."""
    a = -torch.eye(50, dtype=torch.float64)
    est = hutchinson(MatrixOperator(a), stop="pyhessian-0.1", max_products=100, generator=gen(0))
    assert est.products == 2 and est.value == pytest.approx(-50)


def test_lanczos_top_eigenvalues_to_1e4():
    x, y = tiny_data(n=50, d=8)
    model = tiny_mlp(d=8, hidden=12)
    ref = explicit_hessian(model, x, y)
    evals, evecs = torch.linalg.eigh(ref)
    res = lanczos(HessianOperator(model, (x, y)), k=5, tol=1e-8, generator=gen(2))
    assert all(res.converged)
    torch.testing.assert_close(res.eigenvalues, evals.flip(0)[:5], rtol=1e-4, atol=0)
    # eigenvectors: unit norm, and A x = θ x
    for val, vec in zip(res.eigenvalues, res.eigenvectors, strict=True):
        assert torch.linalg.norm(ref @ vec - val * vec) < 1e-5 * abs(float(val)) + 1e-10
    assert subspace_overlap(res.eigenvectors, evecs[:, -5:].T) == pytest.approx(1.0, abs=1e-6)
    assert res.products == res.iterations
    loose = lanczos(HessianOperator(model, (x, y)), k=5, tol=1e-2, per_eigenvalue=True, generator=gen(2))
    assert all(loose.converged) and loose.products <= res.products
    assert bool(((loose.eigenvalues - evals.flip(0)[:5]).abs() <= 1e-2 * loose.eigenvalues.abs()).all())


def test_lanczos_guard_keeps_a_missed_eigenvalue_from_being_certified():
    # A clustered top like a trained ConvNet's Hessian (5.61, 4.92, 4.21, 3.81, 3.57, 3.39, ...) above a bulk.
    n = 300
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(0), dtype=torch.float64))
    top = torch.tensor([5.61, 4.92, 4.21, 3.81, 3.57, 3.39, 3.00, 2.77, 2.59, 2.41], dtype=torch.float64)
    a = q @ torch.diag(torch.cat([top, torch.linspace(-0.55, 2.3, n - len(top), dtype=torch.float64)])) @ q.T

    def wrong_top5(guard: int) -> list[int]:
        bad = []
        for seed in range(40):
            r = lanczos(MatrixOperator(a), k=5, tol=1e-2, per_eigenvalue=True, guard=guard, generator=gen(seed))
            assert all(r.converged)
            if bool(((r.eigenvalues - top[:5]).abs() > 1e-2 * top[:5]).any()):
                bad.append(seed)
        return bad

    assert wrong_top5(guard=0)  # without the guard some starts certify the 6th eigenvalue as the 5th
    assert wrong_top5(guard=3) == []  # the default
    with pytest.raises(ValueError, match="guard"):
        lanczos(MatrixOperator(a), k=5, guard=-1)


def test_lanczos_error_bounds_hold_and_are_sharper_than_residuals():
    n = 200
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen(3), dtype=torch.float64))
    evals = torch.cat([torch.tensor([9.0, 7.5, 7.0, 5.0, 4.6], dtype=torch.float64),
                       torch.linspace(-1.0, 4.0, n - 5, dtype=torch.float64)])
    a = q @ torch.diag(evals) @ q.T
    sharper = 0
    for seed in range(10):
        for iters in (12, 20, 30):  # stopped early on purpose: unconverged pairs too
            r = lanczos(MatrixOperator(a), k=5, tol=1e-12, max_iter=iters, min_iter=iters, generator=gen(seed))
            err = (r.eigenvalues[:, None] - evals[None, :]).abs().min(dim=1).values
            assert bool((err <= r.error_bounds * (1 + 1e-9) + 1e-12).all()), (seed, iters)
            assert bool((r.error_bounds <= r.residuals).all())
            sharper += int((r.error_bounds < 0.5 * r.residuals).sum())
    assert sharper > 50  # the quadratic bound is the one that counts once residuals are small


def test_lanczos_random_matrix_and_which():
    g = gen(0)
    m = torch.randn(120, 120, generator=g, dtype=torch.float64)
    a = (m + m.T) / 2
    ev = torch.linalg.eigvalsh(a)
    la = lanczos(MatrixOperator(a), k=3, tol=1e-10, max_iter=120, generator=gen(1))
    torch.testing.assert_close(la.eigenvalues, ev.flip(0)[:3], rtol=1e-8, atol=1e-8)
    sa = lanczos(MatrixOperator(a), k=2, which="SA", tol=1e-10, max_iter=120, generator=gen(1))
    torch.testing.assert_close(sa.eigenvalues, ev[:2], rtol=1e-8, atol=1e-8)


def test_spectral_density(tmp_path):
    g = gen(0)
    q, _ = torch.linalg.qr(torch.randn(80, 80, generator=g, dtype=torch.float64))
    evals = torch.linspace(-1, 4, 80, dtype=torch.float64)
    a = q @ torch.diag(evals) @ q.T
    sd = spectral_density(MatrixOperator(a), iters=30, vectors=3, generator=gen(1))
    assert sd.products == 90
    for nodes, weights in zip(sd.nodes, sd.weights, strict=True):
        assert weights.sum() == pytest.approx(1.0)
        assert nodes.min() >= -1 - 1e-8 and nodes.max() <= 4 + 1e-8
    assert sd.trace() == pytest.approx(float(a.trace()), rel=0.3)
    path = sd.figure(tmp_path / "density.png", title="test")
    assert path.exists() and path.stat().st_size > 0


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def test_mode_grads_and_buffers_restored():
    torch.manual_seed(0)
    net = BNNet().double()
    x = torch.randn(20, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    net.train()
    net.bn.eval()  # a mixed state must come back exactly
    for p in net.parameters():
        p.grad = torch.full_like(p, 7.0)
    grads = {n: p.grad for n, p in net.named_parameters()}
    buffers = {n: b.clone() for n, b in net.named_buffers()}
    modes = {n: m.training for n, m in net.named_modules()}
    for bn in ("eval", "batch"):
        op = HessianOperator(net, (x, y), bn=bn)
        hutchpp(op, rtol=None, max_products=20, sketch=3, generator=gen(0))
        lanczos(op, k=2, max_iter=10, generator=gen(0))
        op.gradient()
    assert {n: m.training for n, m in net.named_modules()} == modes
    for n, p in net.named_parameters():
        assert p.grad is grads[n] and bool((p.grad == 7).all())
    for n, b in net.named_buffers():
        assert torch.equal(b, buffers[n])


def test_bn_policy_eval_is_eval_mode_hessian_and_batch_refuses_chunks():
    torch.manual_seed(0)
    net = BNNet().double()
    x = torch.randn(16, 1, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    with torch.no_grad():
        net.train()
        net(x)  # non-trivial running statistics
    net.eval()
    ref = explicit_hessian(net, x, y)
    net.train()
    torch.testing.assert_close(dense_matrix(HessianOperator(net, (x, y), batch_size=5)), ref, rtol=1e-9, atol=1e-11)
    with pytest.raises(ValueError, match="couples the examples"):
        HessianOperator(net, (x, y), bn="batch", batch_size=5)


def test_deterministic_for_a_seed():
    x, y = tiny_data()
    model = tiny_mlp()
    a = hutchpp(HessianOperator(model, (x, y)), rtol=None, max_products=30, sketch=4, generator=gen(5))
    b = hutchpp(HessianOperator(model, (x, y)), rtol=None, max_products=30, sketch=4, generator=gen(5))
    assert a.value == b.value and a.stderr == b.stderr
    la = lanczos(HessianOperator(model, (x, y)), k=2, generator=gen(5))
    lb = lanczos(HessianOperator(model, (x, y)), k=2, generator=gen(5))
    assert torch.equal(la.eigenvalues, lb.eigenvalues)


def test_minibatch_trace_unbiased_within_stated_standard_error():
    x, y = tiny_data(n=60, d=8)
    model = tiny_mlp(d=8, hidden=10)
    true = float(torch.trace(explicit_hessian(model, x, y)))
    est = minibatch_trace(model, (x, y), batch_size=20, probes_per_batch=2, rtol=0.08, max_products=4000,
                          generator=gen(4))
    assert est.converged and abs(est.value - true) <= 4 * est.stderr
    again = minibatch_trace(model, (x, y), batch_size=20, probes_per_batch=2, rtol=0.08, max_products=4000,
                            generator=gen(4))
    assert again.value == est.value and again.products == est.products == 2 * len(est.samples)
