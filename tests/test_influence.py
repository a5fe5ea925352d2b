"""ddprobe.influence: the lean trainer, exact leave-one-out, and the influence-function backends."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ddprobe import influence as inf
from ddprobe.nets import ConvNet
from ddprobe.training import TrainRecipe, loss_fn


def _tiny_digits(digits, n=12, m=30):
    return (digits.train.images[:n], digits.train.labels[:n], digits.test.images[:m], digits.test.labels[:m])


def _convnet(seed=0, width=4):
    torch.manual_seed(seed)
    return ConvNet(1, 10, width=width, depth=2, im_size=(8, 8))


def test_fit_matches_core_train(digits):
    from ddprobe.data import LabeledData
    from ddprobe.training import train

    x, y, _, _ = _tiny_digits(digits, n=20)
    recipe = TrainRecipe(steps=25, weight_decay=5e-4)
    a, b = _convnet(), _convnet()
    train(a, LabeledData(x, y, digits.classes), recipe, generator=torch.Generator().manual_seed(0))
    inf.fit(b, x, y, recipe)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6, rtol=0), name


def test_fit_falls_back_for_minibatch_recipes(digits):
    x, y, _, _ = _tiny_digits(digits, n=20)
    recipe = TrainRecipe(steps=6, batch_size=8)
    assert "batch size" in inf.lean_unsupported(recipe, 20)
    a, b = _convnet(), _convnet()
    inf.fit(a, x, y, recipe, generator=torch.Generator().manual_seed(3))
    inf.fit(b, x, y, recipe, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def _brute_force_loo(init, x, y, tx, ty, steps, lr=0.01, momentum=0.9):
    """An independent leave-one-out loop: torch.optim.SGD, backward(), a plain Python loop over examples."""
    rows = []
    for i in [None, *range(x.shape[0])]:
        keep = [k for k in range(x.shape[0]) if k != i]
        net = copy.deepcopy(init)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=momentum)
        net.train()
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[keep]), y[keep]).backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            rows.append(nn.functional.cross_entropy(net(tx), ty, reduction="none"))
    return rows[0], torch.stack(rows[1:])


def test_exact_loo_matches_brute_force(digits):
    x, y, tx, ty = _tiny_digits(digits)
    init = _convnet()
    before = copy.deepcopy(init.state_dict())
    res = inf.exact_loo(init, x, y, tx, ty, TrainRecipe(steps=15), strategy="serial", checkpoint_steps=(0, 5, 10))
    full, loo = _brute_force_loo(init, x, y, tx, ty, 15)
    assert [s for s, _ in res.checkpoints] == [0, 5, 10]
    assert all(torch.equal(before[k], v) for k, v in res.checkpoints[0][1].items())
    final = copy.deepcopy(init)
    final.load_state_dict(res.final_state)
    assert torch.allclose(inf.test_outputs(final, tx, ty)[0], full, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in init.state_dict().items())  # the initialization is untouched
    assert torch.allclose(res.loss_full, full, atol=1e-5)
    assert torch.allclose(res.loss_loo, loo, atol=1e-5)
    assert torch.allclose(res.influence, loo - full, atol=1e-5)
    assert res.influence.shape == (12, 30) and res.retrains == 14
    assert res.noise.abs().max() < 1e-3  # reordering a full batch changes only rounding
    # margins are oriented like losses: positive margin influence = the example helps
    assert torch.corrcoef(torch.stack([res.influence.flatten(), res.margin_influence.flatten()]))[0, 1] > 0.5


def test_vmap_strategy_matches_serial(digits):
    x, y, tx, ty = _tiny_digits(digits, n=8, m=20)
    init = _convnet()
    recipe = TrainRecipe(steps=10, weight_decay=1e-3)
    a = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="serial")
    b = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="vmap", vmap_batch=3)
    assert b.strategy == "vmap"
    assert torch.allclose(a.loss_loo, b.loss_loo, atol=1e-4)
    assert torch.allclose(a.margin_loo, b.margin_loo, atol=1e-4)


def test_process_strategy_matches_serial(digits):
    x, y, tx, ty = _tiny_digits(digits, n=6, m=20)
    init = _convnet()
    recipe = TrainRecipe(steps=10)
    a = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="serial")
    seen = []
    b = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="processes", workers=2, advance=seen.append)
    assert sum(seen) == 8
    assert torch.allclose(a.loss_loo, b.loss_loo, atol=1e-6)
    assert torch.allclose(a.loss_noise, b.loss_noise, atol=1e-6)


def test_auto_strategy():
    r = TrainRecipe()
    assert inf.resolve_strategy("auto", "cpu", 2, r, 10) == "processes"
    assert inf.resolve_strategy("auto", "cpu", 1, r, 10) == "serial"
    assert inf.resolve_strategy("auto", "cuda", 1, r, 10) == "vmap"
    assert inf.resolve_strategy("auto", "cuda", 1, TrainRecipe(batch_size=4), 10) == "serial"
    with pytest.raises(ValueError, match="full-batch"):
        inf.resolve_strategy("vmap", "cpu", 1, TrainRecipe(augment="flip_crop"), 10)


# --- a convex model: multinomial logistic regression with an L2 term ----------------------------------------------


class LogReg(nn.Module):
    """Logistic regression shaped like a ddprobe model: ``embed`` is the identity, ``head`` the linear layer."""

    def __init__(self, d, k):
        super().__init__()
        self.head = nn.Linear(d, k)

    def embed(self, x):
        return x.flatten(1)

    def forward(self, x):
        return self.head(self.embed(x))


@pytest.fixture(scope="module")
def convex():
    return convex_problem()


def convex_problem():
    gen = torch.Generator().manual_seed(0)
    d, k, n, m = 5, 3, 20, 40
    centers = torch.randn(k, d, generator=gen) * 1.5
    y = torch.arange(n) % k
    ty = torch.arange(m) % k
    x = centers[y] + torch.randn(n, d, generator=gen)
    tx = centers[ty] + torch.randn(m, d, generator=gen)
    torch.manual_seed(1)
    init = LogReg(d, k)
    l2 = 0.05
    recipe = TrainRecipe(lr=0.5, momentum=0.9, weight_decay=l2, steps=150)  # converges to the regularized optimum
    loo = inf.exact_loo(init, x, y, tx, ty, recipe, strategy="serial")
    model = inf.fit(copy.deepcopy(init), x, y, recipe)
    ckpts = []
    net = copy.deepcopy(init)
    inf.fit(net, x, y, recipe, callbacks=[lambda s: ckpts.append((s.step, copy.deepcopy(s.model.state_dict())))
                                          if s.step % 10 == 0 and s.step < s.total else None])
    problem = inf.InfluenceProblem(model, x, y, tx, ty, lr=0.5, l2=l2, checkpoints=ckpts)
    return problem, loo


def _explicit_reference(problem):
    """Influence from the closed form: Hessian by torch.autograd.functional, inverse by torch.linalg.inv."""
    w, b = problem.model.head.weight.detach(), problem.model.head.bias.detach()
    theta = torch.cat([w.flatten(), b]).double()
    k, d = w.shape
    x, y, tx, ty = (t.double() if t.is_floating_point() else t for t in
                    (problem.train_x, problem.train_y, problem.test_x, problem.test_y))

    def loss(th, xx, yy):
        logits = xx @ th[: k * d].view(k, d).T + th[k * d:]
        return nn.functional.cross_entropy(logits, yy)

    h = torch.autograd.functional.hessian(lambda th: loss(th, x, y) + 0.5 * problem.l2 * th.pow(2).sum(), theta)
    def grads(xs, ys):
        return torch.stack([torch.autograd.functional.jacobian(lambda th, a=a, b=b: loss(th, a[None], b[None]), theta)
                            for a, b in zip(xs, ys, strict=True)])

    g_train, g_test = grads(x, y), grads(tx, ty)
    removal = g_train + problem.l2 * theta  # retraining on the other n - 1 examples: see InfluenceProblem
    return (removal @ torch.linalg.inv(h) @ g_test.T / (len(y) - 1)).float()


def test_influence_functions_agree_on_a_convex_model(convex):
    problem, loo = convex
    ref = _explicit_reference(problem)
    opts = {"damping": 0.0}
    results = {
        "explicit": inf.get_backend("explicit", opts).compute(problem),
        "explicit_all": inf.get_backend("explicit", {**opts, "params": "all"}).compute(problem),
        "cg": inf.get_backend("cg", {**opts, "max_iter": 50}).compute(problem),
        "lissa": inf.get_backend("lissa", {**opts, "depth": 300}).compute(problem),
        "arnoldi": inf.get_backend("arnoldi", {**opts, "iterations": 18, "rank": 18}).compute(problem),
    }
    scale = ref.abs().max()
    for name, r in results.items():
        assert r.status == "ok", (name, r.info)
        assert r.scores.shape == loo.influence.shape
        assert (r.scores - ref).abs().max() < 2e-3 * scale, name
        corr = inf.correlations(r.scores, loo.influence)
        assert corr["spearman"] > 0.9 and corr["pearson"] > 0.9, (name, corr)
        assert r.seconds > 0


def test_tracin_runs_over_checkpoints_and_tracks_loo(convex):
    problem, loo = convex
    r = inf.get_backend("tracin").compute(problem)
    assert r.status == "ok" and r.info["checkpoints"] == len(problem.checkpoints)
    assert inf.correlations(r.scores, loo.influence)["spearman"] > 0.3
    no_ckpt = inf.InfluenceProblem(problem.model, problem.train_x, problem.train_y, problem.test_x, problem.test_y)
    failed = inf.get_backend("tracin").compute(no_ckpt)
    assert failed.status == "failed" and failed.scores is None and "checkpoints" in failed.info["error"]


def test_lissa_reports_divergence_instead_of_nan(convex):
    problem, _ = convex
    r = inf.get_backend("lissa", {"scale": 0.01, "damping": 0.0, "depth": 500}).compute(problem)
    assert r.status == "diverged" and r.scores is None
    assert r.info["diverged"] and r.info["step"] < 500 and "scale" in r.info["hint"]


def test_cg_solve_and_arnoldi_on_a_known_matrix():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    evals = torch.linspace(0.5, 10, 12)
    a = q @ torch.diag(evals) @ q.T
    b = torch.randn(12, 3, generator=gen)
    x, info = inf.cg_solve(lambda v: a @ v, b, 50, 1e-8)
    assert info["converged"] and torch.allclose(a @ x, b, atol=1e-4)
    vals, vecs = inf.arnoldi_eig(lambda v: a @ v, 12, 12, generator=gen)
    assert torch.allclose(vals.sort().values, evals, atol=1e-3)
    assert abs(inf.top_eigenvalue(lambda v: a @ v, 12, iters=200, generator=gen) - 10) < 0.1


def test_backend_registry():
    assert {"explicit", "cg", "lissa", "arnoldi", "tracin"} <= set(inf.BACKENDS)
    with pytest.raises(KeyError, match="did you mean 'lissa'"):
        inf.get_backend("lisa")

    class Dup(inf.InfluenceBackend):
        name = "cg"

    with pytest.raises(ValueError, match="already registered"):
        inf.register_backend(Dup)
    with pytest.raises(Exception, match="extra"):
        inf.get_backend("cg", {"nope": 1})


def test_explicit_refuses_large_subsets(convex):
    problem, _ = convex
    r = inf.get_backend("explicit", {"max_params": 3}).compute(problem)
    assert r.status == "failed" and "max_params" in r.info["error"]


def test_objective_all_params_on_a_convnet(digits):
    x, y, tx, ty = _tiny_digits(digits, n=6, m=10)
    net = inf.fit(_convnet(width=2), x, y, TrainRecipe(steps=5))
    obj = inf.Objective(net, x, y, "all")
    assert obj.dim == sum(p.numel() for p in net.parameters())
    g = obj.train_grads()
    ref = torch.autograd.grad(loss_fn(net(x[:1]), y[:1]), list(net.parameters()))
    assert torch.allclose(g[0], torch.cat([t.flatten() for t in ref]), atol=1e-5)
    last = inf.Objective(net, x, y, "last")
    assert last.dim == net.head.weight.numel() + net.head.bias.numel()
    v = torch.randn(obj.dim)
    assert torch.allclose(obj.hvp(v), obj.hvp(v.unsqueeze(1)).squeeze(1), atol=1e-5)


def test_summaries():
    a = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    idx, vals = inf.top_k(a, 2)
    assert idx.tolist() == [[0, 2], [3, 2]] and vals[0].tolist() == [3.0, 2.0]
    assert inf.top_k(a, 1, helped=False)[0].tolist() == [[3], [0]]
    assert inf.label_agreement(a, torch.tensor([0, 1]), torch.tensor([0, 1, 0, 1]), 2) == 0.75
    assert inf.rank_agreement([a, a]) == pytest.approx(1.0)
    assert inf.rank_agreement([a, -a]) == pytest.approx(-1.0)
    c = inf.correlations(a, 2 * a + 1)
    assert c["pearson"] == pytest.approx(1.0) and c["spearman"] == pytest.approx(1.0)


def test_linear_head_closed_forms_match_autograd(digits):
    x, y, tx, ty = _tiny_digits(digits, n=8, m=10)
    net = inf.fit(_convnet(width=4), x, y, TrainRecipe(steps=5))
    fast = inf.Objective(net, x, y, "last", l2=0.1)
    slow = inf.Objective(net, x, y, "last", l2=0.1)
    slow.linear = False
    assert fast.linear
    assert torch.allclose(fast.train_grads(), slow.train_grads(), atol=1e-6)
    assert torch.allclose(fast.example_grads(tx, ty), slow.example_grads(tx, ty), atol=1e-6)
    v = torch.randn(fast.dim, 3)
    assert torch.allclose(fast.hvp(v), slow.hvp(v), atol=1e-5)
    idx = torch.tensor([0, 3, 5])
    assert torch.allclose(fast.hvp(v[:, 0], idx), slow.hvp(v[:, 0], idx), atol=1e-5)
    soft = torch.softmax(torch.randn(8, 10), 1)
    assert torch.allclose(fast.example_grads(x, soft), slow.example_grads(x, soft), atol=1e-6)


def test_a_custom_backend_as_documented(convex):
    """The example of docs/influence.md: a registered backend is found by name and audited like the built-ins."""
    from pydantic import Field

    class GradDot(inf.InfluenceBackend):
        name = "grad-dot-test"
        description = "plain gradient dot products at the trained model"

        class Options(inf.InfluenceBackend.Options):
            params: str = Field("last", description="'last' or 'all'")

        def _compute(self, problem):
            obj = problem.objective(self.options.params)
            g = obj.train_grads()
            cols = [g @ gt.T for _, gt in obj.test_grad_chunks(problem.test_x, problem.test_y)]
            return inf.BackendResult(torch.cat(cols, 1).cpu() / problem.n)

    inf.register_backend(GradDot)
    try:
        problem, loo = convex
        r = inf.get_backend("grad-dot-test").compute(problem)
        assert r.status == "ok" and r.scores.shape == loo.influence.shape
        assert inf.correlations(r.scores, loo.influence)["spearman"] > 0.3
    finally:
        del inf.BACKENDS["grad-dot-test"]


def _square(x):
    return x * x


def test_executor_maps_in_order_in_processes_and_inline():
    import functools

    from ddprobe.executor import map_calls, process_map

    seen = []
    assert map_calls(_square, range(6), workers=2, on_result=lambda i, r: seen.append(i)) == [0, 1, 4, 9, 16, 25]
    assert sorted(seen) == list(range(6))
    assert map_calls(functools.partial(pow, 2), [1, 3], workers=1) == [2, 8]
    assert process_map(inf._retrain_many, [], workers=2) == []


# --- whole-network curvature: Gauss-Newton products, and CG on an indefinite Hessian --------------------------------


def _flat_fn(net):
    """``(theta, x) -> logits`` of ``net`` as a function of all its parameters flattened, and theta at the model."""
    from torch.func import functional_call

    named = {n: p.detach() for n, p in net.named_parameters()}
    shapes = [p.shape for p in named.values()]
    sizes = [p.numel() for p in named.values()]

    def fn(theta, x):
        parts = torch.split(theta, sizes)
        return functional_call(net, {n: t.view(s) for n, t, s in zip(named, parts, shapes, strict=True)}, (x,))

    return fn, torch.cat([p.flatten() for p in named.values()])


def _ggn_reference(net, x, y, l2):
    """``mean_i J_i^T (diag p_i - p_i p_i^T) J_i + l2 I`` from per-example Jacobians (torch.func.jacrev), and the
    per-example loss gradients of ``x`` (the unregularized cross-entropy)."""
    from torch.func import jacrev

    fn, theta = _flat_fn(net.eval())
    jac = torch.stack([jacrev(fn)(theta, xi[None])[0] for xi in x])  # [n, K, p]
    prob = torch.softmax(fn(theta, x), 1).detach()
    hz = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    g = torch.einsum("nkp,nkl,nlq->pq", jac, hz, jac) / x.shape[0] + l2 * torch.eye(theta.numel())
    return g.double(), theta


def _example_grads(net, x, y):
    from torch.func import grad

    fn, theta = _flat_fn(net.eval())
    return torch.stack([grad(lambda t, a=a, b=b: loss_fn(fn(t, a[None]), b[None]))(theta) for a, b in zip(x, y,
                                                                                                         strict=True)])


@pytest.fixture(scope="module")
def tiny_convnet(digits):
    x, y, tx, ty = _tiny_digits(digits, n=12, m=15)
    net = inf.fit(_convnet(width=2), x, y, TrainRecipe(steps=20, weight_decay=0.01))
    return net, x, y, tx, ty


def test_ggn_products_match_an_explicit_gauss_newton_matrix(tiny_convnet):
    net, x, y, _, _ = tiny_convnet
    ref, _ = _ggn_reference(net, x, y, l2=0.01)
    obj = inf.Objective(net, x, y, "all", l2=0.01)
    got = obj.hessian("ggn").double()
    assert (got - ref).abs().max() < 1e-4 * ref.abs().max()
    v = torch.randn(obj.dim, 3, generator=torch.Generator().manual_seed(0))
    idx = torch.tensor([1, 4, 7])
    sub, _ = _ggn_reference(net, x[idx], y[idx], l2=0.01)
    assert torch.allclose(obj.ggn_vp(v[:, 0], idx).double(), sub @ v[:, 0].double(), atol=1e-4 * float(sub.abs().max()))
    assert torch.allclose(obj.ggn_vp(v)[:, 0], obj.ggn_vp(v[:, 0]), atol=1e-6)


def test_whole_network_cg_on_the_gauss_newton_matrix_matches_its_damped_inverse(tiny_convnet):
    net, x, y, tx, ty = tiny_convnet
    l2, damping = 0.01, 0.05
    ggn, theta = _ggn_reference(net, x, y, l2)
    removal = (_example_grads(net, x, y) + l2 * theta).double()
    ref = removal @ torch.linalg.solve(ggn + damping * torch.eye(len(theta)), _example_grads(net, tx, ty).double().T)
    ref = (ref / (len(y) - 1)).float()
    problem = inf.InfluenceProblem(net, x, y, tx, ty, l2=l2)
    r = inf.get_backend("cg", {"params": "all", "damping": damping, "max_iter": 400, "tol": 1e-7}).compute(problem)
    assert r.status == "ok", r.info
    assert r.info["curvature"] == "ggn" and r.info["damping"] == damping and r.info["negative_curvature"] == 0
    assert (r.scores - ref).abs().max() < 1e-3 * ref.abs().max()
    explicit = inf.get_backend("explicit", {"params": "all", "damping": damping}).compute(problem)
    assert explicit.info["curvature"] == "ggn" and explicit.info["negative_eigenvalues"] == 0
    assert (explicit.scores - ref).abs().max() < 1e-4 * ref.abs().max()


def test_cg_stops_and_says_so_on_an_indefinite_hessian(tiny_convnet):
    net, x, y, tx, ty = tiny_convnet
    problem = inf.InfluenceProblem(net, x, y, tx, ty, l2=0.01)
    hess = inf.get_backend("explicit", {"params": "all", "damping": 0.0, "curvature": "hessian"}).compute(problem)
    assert hess.info["curvature"] == "hessian" and hess.info["min_eigenvalue"] < 0  # the premise: indefinite
    r = inf.get_backend("cg", {"params": "all", "damping": 0.0, "curvature": "hessian", "max_iter": 300}).compute(
        problem)
    assert r.status == "diverged" and r.scores is None
    assert r.info["negative_curvature"] > 0 and r.info["iterations"] < 300
    assert "indefinite" in r.info["error"] and "ggn" in r.info["hint"]


def test_cg_solve_reports_negative_curvature():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    a = q @ torch.diag(torch.tensor([-1.0, 0.5, 1, 2, 3, 4])) @ q.T
    b = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    x, info = inf.cg_solve(lambda v: a @ v, b, 100, 1e-8)
    assert info["negative_curvature"] > 0 and info["first_negative_curvature_iteration"] <= 6
    assert not info["converged"] and info["iterations"] <= 7
    _, ok = inf.cg_solve(lambda v: a @ v + 2 * v, b, 100, 1e-6)  # damping 2 > |lambda_min|: positive definite
    assert ok["converged"] and ok["negative_curvature"] == 0
