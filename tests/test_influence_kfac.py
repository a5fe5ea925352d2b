"""ddprobe.influence.kfac: K-FAC and EK-FAC factors against explicit Gauss-Newton matrices, and the backends."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ddprobe import influence as inf
from ddprobe.nets import ConvNet
from ddprobe.training import TrainRecipe


def _flat(net):
    from torch.func import functional_call

    named = {n: p.detach() for n, p in net.named_parameters()}
    shapes, sizes = [p.shape for p in named.values()], [p.numel() for p in named.values()]

    def fn(theta, x):
        parts = torch.split(theta, sizes)
        return functional_call(net, {n: t.view(s) for n, t, s in zip(named, parts, shapes, strict=True)}, (x,))

    return fn, torch.cat([p.flatten() for p in named.values()]), list(named), sizes


def _ggn(net, x):
    """Explicit ``mean_i J_i^T (diag p_i - p_i p_i^T) J_i`` over all parameters (per-example Jacobians)."""
    from torch.func import jacrev

    fn, theta, names, sizes = _flat(net.eval())
    jac = torch.stack([jacrev(fn)(theta, xi[None])[0] for xi in x]).double()  # [n, K, p]
    prob = torch.softmax(fn(theta, x), 1).detach().double()
    hz = torch.diag_embed(prob) - prob[:, :, None] * prob[:, None, :]
    return torch.einsum("nkp,nkl,nlq->pq", jac, hz, jac) / x.shape[0], names, sizes


def _layer_index(names, sizes, layer):
    """Flat indices of ``layer``'s weight and bias, arranged as the ``[out, in1]`` layout (bias last column)."""
    offsets = dict(zip(names, torch.cumsum(torch.tensor([0, *sizes]), 0).tolist(), strict=False))
    w = layer.module.weight
    out = w.shape[0]
    idx = torch.arange(w.numel()).view(out, -1) + offsets[f"{layer.name}.weight"]
    if layer.has_bias:
        idx = torch.cat([idx, (torch.arange(out) + offsets[f"{layer.name}.bias"]).view(-1, 1)], 1)
    return idx


@pytest.fixture(scope="module")
def convnet(digits):
    x, y = digits.train.images[:16], digits.train.labels[:16]
    torch.manual_seed(0)
    net = inf.fit(ConvNet(1, 10, width=3, depth=2, im_size=(8, 8)), x, y, TrainRecipe(steps=20))
    return net, x, y, digits.test.images[:12], digits.test.labels[:12]


def test_ekfac_eigenvalues_are_the_gauss_newton_diagonal_in_the_kfac_basis(convnet):
    """EK-FAC's correction: Lambda[k, l] = (Q^T G Q)[kl, kl] for the exact Gauss-Newton block G of each layer."""
    net, x, y, _, _ = convnet
    ggn, names, sizes = _ggn(net, x)
    kf = inf.KroneckerFactored(net, kind="ekfac", chunk=5).fit(x, y)  # several chunks: the sums accumulate
    assert [layer.name for layer in kf.layers] == ["features.0", "features.4", "head"]
    for layer in kf.layers:
        idx = _layer_index(names, sizes, layer)
        block = ggn[idx.flatten()][:, idx.flatten()].view(*idx.shape, *idx.shape)  # [out, in1, out, in1]
        qs, qa = layer.qs.double(), layer.qa.double()
        ref = torch.einsum("ak,bl,abcd,ck,dl->kl", qs, qa, block, qs, qa)
        assert torch.allclose(layer.eig.double(), ref, rtol=1e-3, atol=1e-6 * float(ref.abs().max())), layer.name


def test_kfac_factors_match_their_definitions_on_a_convolution(convnet):
    """A = mean_i sum_t a a^T over unfolded patches, S = mean_i E_c mean_t s s^T at the conv's output, computed
    here from patches cut out by hand and gradients at a split point of the network."""
    net, x, y, _, _ = convnet
    kf = inf.KroneckerFactored(net, kind="kfac").fit(x, y)
    layer = kf.layers[1]  # features.4: a 3x3 convolution, padding 1, on 3 x 4 x 4 inputs
    body, conv, rest = net.features[:4], net.features[4], net.features[5:]
    with torch.no_grad():
        inp = body(x)
    pad = nn.functional.pad(inp, (1, 1, 1, 1))
    patches = torch.stack([pad[:, :, i:i + 3, j:j + 3].flatten(1) for i in range(4) for j in range(4)], 1)
    a = torch.cat([patches, torch.ones(*patches.shape[:2], 1)], 2).double()  # [n, T, in1]
    a_ref = torch.einsum("nte,ntf->ef", a, a) / len(x)
    out = conv(inp).detach().requires_grad_(True)
    logits = net.head(rest(out).flatten(1))
    prob = torch.softmax(logits, 1).detach()
    s_ref = 0
    for c in range(10):
        seed = prob[:, c:c + 1].sqrt() * (prob - nn.functional.one_hot(torch.tensor(c), 10))
        g = torch.autograd.grad(logits, out, seed, retain_graph=True)[0].flatten(2).transpose(1, 2).double()
        s_ref = s_ref + torch.einsum("ntd,nte->de", g, g) / g.shape[1] / len(x)
    la, qa = torch.linalg.eigh(a_ref)
    ls, qs = torch.linalg.eigh(s_ref)
    # eigenvalues of the Kronecker product agree; eigenvectors up to sign (compare the reconstructed factors)
    assert torch.allclose(layer.eig.double(), ls.clamp_min(0)[:, None] * la.clamp_min(0)[None, :], rtol=1e-3,
                          atol=1e-7)
    assert torch.allclose((layer.qa.double() * la) @ layer.qa.double().T, a_ref, atol=1e-4 * float(a_ref.abs().max()))


def test_kfac_is_exact_for_a_linear_layer_on_one_repeated_input():
    """Every example with the same input: the Gauss-Newton matrix is exactly A (x) S, so K-FAC and EK-FAC
    preconditioning equal the explicit damped inverse, and so do the influence scores."""
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 4))
    x = torch.randn(1, 5, generator=gen).expand(6, 5).contiguous()
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    tx, ty = torch.randn(7, 5, generator=gen), torch.arange(7) % 4
    l2, damping = 0.03, 0.2
    ggn, _, _ = _ggn(net, x)
    inverse = torch.linalg.inv(ggn + (l2 + damping) * torch.eye(len(ggn), dtype=ggn.dtype))
    problem = inf.InfluenceProblem(net, x, y, tx, ty, l2=l2)
    obj = problem.objective("all")
    ref = (problem.removal_gradients(obj).T.double() @ inverse @ torch.cat(
        [g for _, g in obj.test_grad_chunks(tx, ty)]).double().T / (len(y) - 1))
    for kind in ("kfac", "ekfac"):
        r = inf.get_backend(kind, {"damping": damping}).compute(problem)
        assert r.status == "ok" and r.info["kind"] == kind and r.info["layers"][0]["damping"] == damping
        assert torch.allclose(r.scores.double(), ref, atol=1e-4 * float(ref.abs().max())), kind


def test_heuristic_damping_and_the_norm_parameters(convnet):
    net, x, y, tx, ty = convnet
    problem = inf.InfluenceProblem(net, x, y, tx, ty)
    r = inf.get_backend("ekfac").compute(problem)
    assert r.status == "ok" and r.scores.shape == (16, 12)
    for row in r.info["layers"]:
        assert row["damping"] == pytest.approx(0.1 * row["mean_eigenvalue"])
    assert r.info["others"] == "skip"
    assert r.info["other_params"] == ["features.1.weight", "features.1.bias", "features.5.weight", "features.5.bias"]
    diag = inf.get_backend("ekfac", {"others": "diagonal"}).compute(problem)
    assert diag.status == "ok" and diag.info["others"] == "diagonal"
    # "diagonal" adds exactly the norm parameters' diagonal-preconditioned dot products, from gradients computed
    # here independently of the layer hooks
    ggn, names, sizes = _ggn(net, x)
    fn, theta, _, _ = _flat(net)
    others = torch.cat([torch.arange(o, o + n) for name, o, n in zip(
        names, torch.cumsum(torch.tensor([0, *sizes]), 0).tolist(), sizes, strict=False) if name in r.info[
        "other_params"]])
    from torch.func import grad

    def grads(xs, ys):
        return torch.stack([grad(lambda t, a=a, b=b: nn.functional.cross_entropy(fn(t, a[None]), b[None]))(theta)
                            for a, b in zip(xs, ys, strict=True)])[:, others].double()

    eig = ggn.diagonal()[others]
    damp = torch.cat([torch.full((n,), 0.1 * float(ggn.diagonal()[o:o + n].mean())) for name, o, n in zip(
        names, torch.cumsum(torch.tensor([0, *sizes]), 0).tolist(), sizes, strict=False) if name in r.info[
        "other_params"]]).double()
    extra = (grads(x, y) / (eig + damp)) @ grads(tx, ty).T / (len(y) - 1)
    assert torch.allclose((diag.scores - r.scores).double(), extra, atol=1e-4 * float(extra.abs().max()))
    head = inf.get_backend("kfac", {"params": "last"}).compute(problem)
    assert head.status == "ok" and [row["layer"] for row in head.info["layers"]] == ["head"]


def test_unsupported_layers_fail_with_the_reason():
    net = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 2, 5, 5))
    problem = inf.InfluenceProblem(net, torch.randn(4, 2, 5, 5), torch.arange(4) % 3, torch.randn(2, 2, 5, 5),
                                   torch.arange(2))
    r = inf.get_backend("ekfac").compute(problem)
    assert r.status == "failed" and "groups=2" in r.info["error"]

    class Twice(nn.Module):  # one layer used twice in a forward pass: its factors would mix two inputs
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(torch.relu(self.layer(x)))

    problem = inf.InfluenceProblem(Twice(), torch.randn(4, 3), torch.arange(4) % 3, torch.randn(2, 3),
                                   torch.arange(2))
    r = inf.get_backend("kfac").compute(problem)
    assert r.status == "failed" and "more than once" in r.info["error"]


def test_the_probe_accepts_the_kronecker_backends():
    from pydantic import ValidationError

    from ddprobe import registry

    probe = registry.get_probe("influence")
    opts = probe.Options(backends=["ekfac", "kfac"], backend_options={"ekfac": {"params": "all"}})
    assert opts.backend_options["ekfac"] == {"params": "all"}
    with pytest.raises(ValidationError, match="others"):
        probe.Options(backends=["ekfac"], backend_options={"ekfac": {"others": "nope"}})
