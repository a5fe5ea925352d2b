"""The CUDA paths against the CPU ones. Skipped without a CUDA GPU; where one exists they run with the suite.

No GPU was available to the sessions that wrote ddprobe, so these are the first check to run on one
(``pytest -m gpu``): they compare products, traces and eigenvalues computed on the GPU with the CPU's, and run the
default study there (``device = "auto"`` picks CUDA), whose expectations must hold as they do on the CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

REPO = Path(__file__).resolve().parents[1]


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.GroupNorm(3, 3), nn.Tanh(), nn.Flatten(),
                          nn.Linear(3 * 16, 4)).double()
    g = torch.Generator().manual_seed(1)
    return model, torch.randn(40, 1, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (40,), generator=g)


@pytest.mark.parametrize("kind", ["hessian", "ggn"])
def test_curvature_on_cuda_matches_cpu(kind):
    import copy

    from ddprobe.curvature import HessianOperator, dense_matrix, diagonal, exact_trace, lanczos, minibatch_trace

    model, x, y = _tiny()
    cpu = dense_matrix(HessianOperator(model, (x, y), kind=kind))
    gpu_model = copy.deepcopy(model).cuda()
    op = HessianOperator(gpu_model, (x.cuda(), y.cuda()), kind=kind)
    assert op.batched  # blocks of products go as one is_grads_batched backward on CUDA
    torch.testing.assert_close(dense_matrix(op).cpu(), cpu, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(diagonal(op).cpu(), cpu.diagonal(), rtol=1e-9, atol=1e-11)
    assert exact_trace(op).value == pytest.approx(float(cpu.trace()), rel=1e-9)
    top = lanczos(op, 3, tol=1e-8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(top.eigenvalues, torch.linalg.eigvalsh(cpu).flip(0)[:3], rtol=1e-6, atol=1e-9)
    est = minibatch_trace(gpu_model, (x.cuda(), y.cuda()), batch_size=10, rtol=0.2, max_products=4000,
                          generator=torch.Generator().manual_seed(0), kind=kind)
    assert abs(est.value - float(cpu.trace())) <= 4 * est.stderr
    for p in gpu_model.parameters():  # side-effect free on the GPU too
        assert p.grad is None and p.is_cuda


def test_default_study_on_cuda(tmp_path):
    """The README's default study with device = "auto" on a GPU machine: every probe runs, every expectation holds."""
    from ddprobe.spec import load_spec
    from ddprobe.study import run_study

    spec = load_spec(REPO / "specs" / "study.toml")
    assert spec.study.device == "auto"
    results = run_study(spec, tmp_path / "out", no_cache=True)
    assert str(results.provenance["device"]).startswith("cuda"), results.provenance
    assert results.exit_code == 0, (results.errors, [(p.id, p.status, p.error) for p in results.probes])


def test_distilled_sets_as_ray_gpu_tasks(tmp_path):
    """[study.ray] num_gpus: each distilled set (and MTT expert) is a Ray task holding half of the GPU."""
    pytest.importorskip("ray")
    import json
    import os

    from test_distill_bag import DISTILLER, SPEC

    from ddprobe.study import run_study

    (tmp_path / "blend.py").write_text(DISTILLER)
    d = tmp_path / "ray"
    (d / "log").mkdir(parents=True)
    text = SPEC.format(executor="ray", log=(d / "log").as_posix()).replace(
        "[data]", '[study.ray]\nnum_gpus = 0.5\n\n[data]').replace('seed = 3', 'seed = 3\ndevice = "cuda"')
    (d / "study.toml").write_text(text)
    results = run_study(d / "study.toml", d / "out")
    report = json.loads((d / "out" / "report.json").read_text())
    assert {n: s["status"] for n, s in report["distilled"].items() if n != "broken"} == dict.fromkeys(
        ["dm", "mtt", "blend", "random_ipc1", "random_ipc2"], "ok"), results.errors
    assert str(results.provenance["device"]).startswith("cuda")
    assert (d / "log" / "distilled-blend").read_text() != str(os.getpid())  # in a Ray worker, on its GPU share
