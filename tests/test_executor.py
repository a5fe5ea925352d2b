"""Executors: serial, local processes and Ray give the same numbers; Ray retries; a missing Ray extra is exit 2."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.errors import DDProbeError
from ddprobe.executor import ProcessExecutor, RayOptions, SerialExecutor, make_executor
from ddprobe.study import run_study

SPEC = """
[study]
name = "executors"
seed = 1
control = false
workers = 2
executor = "{executor}"
cache_dir = "{cache}"
plugins = ["../mapping_probe.py"]

[train]
steps = 20

[pretrain]
epochs = 1
batch_size = 128

[models]
mlp = {{ arch = "mlp", hidden = 16 }}

[distilled.r]
distiller = "random"
ipc = 1

[[probe]]
kind = "agreement"
subset_models = 6
subset_fraction = [0.05, 0.2]
subset_epochs = 2
early_runs = 3
early_steps = 8
batch_size = 64
training = "{training}"
chunk = 2                 # several stacks: several tasks

[[probe]]
kind = "influence"
inits = 1
test_images = 50
recipe = {{ steps = 10 }}
gallery_classes = 0
backends = ["tracin"]

[[probe]]
kind = "mapped"

[[probe]]
kind = "evaluate"
seeds = 3

[[probe]]
kind = "hessian"
recipe = {{ steps = 4 }}
checkpoints = 2
real_subsample = 100
budget = 24
rtol = 0.5
top_k = 2

[report]
formats = ["json"]
"""

# A third-party probe (a plugin file, not importable on workers) whose bag of work goes through ctx.map.
PLUGIN = '''
from pydantic import BaseModel
from ddprobe import ProbeResult, hookimpl


def fit_one(shared, seed):
    """A pure function of its inputs: a seeded least-squares fit on the shared data."""
    import torch

    x, y = shared
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape[1], generator=g, dtype=torch.float64)
    for _ in range(20):
        w = w - 0.01 * x.T @ (x @ w - y) / len(y)
    return float(((x @ w - y) ** 2).mean())


class Mapped:
    name = "mapped"
    description = "a bag of independent fits through ctx.map"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        x = ctx.real.train.images.flatten(1)[:300].double()
        y = ctx.real.train.labels[:300].double()
        losses = ctx.map(fit_one, range(5), "fits", shared=(x, y))
        return ProbeResult(metrics={f"loss{i}": v for i, v in enumerate(losses)}, summary="fits")


@hookimpl
def register_probes(register):
    register(Mapped())
'''


def _spec(tmp_path: Path, executor: str, training: str = "batched") -> Path:
    d = tmp_path / executor
    d.mkdir()
    (tmp_path / "mapping_probe.py").write_text(PLUGIN)  # one plugin file for every run
    path = d / "study.toml"
    path.write_text(SPEC.format(executor=executor, cache=(d / "cache").as_posix(), training=training))
    return path


def _metrics(out: Path) -> dict[str, dict[str, float]]:
    report = json.loads((out / "report.json").read_text())
    probes = {p["id"]: p for p in report["probes"]}
    assert all(p["status"] == "ok" for p in probes.values()), {k: p.get("error") for k, p in probes.items()}
    # wall-clock timings are the only numbers allowed to differ
    return {k: {m: v for m, v in p["metrics"].items() if "seconds" not in m} for k, p in probes.items()}


# -- the interface, without Ray ----------------------------------------------------------------------------------

def _affine(shared, item):
    return shared["a"] * item + torch.get_num_threads()


def test_serial_and_process_executors_map_in_item_order_with_one_thread_per_worker():
    shared = {"a": 3}
    seen: list[int] = []
    serial = SerialExecutor().map(_affine, range(7), shared=shared)
    threads = torch.get_num_threads()
    assert serial == [3 * i + threads for i in range(7)]
    procs = ProcessExecutor(2).map(_affine, range(7), shared=shared, on_result=lambda i, r: seen.append(i))
    assert procs == [3 * i + 1 for i in range(7)]  # workers run torch with one thread
    assert sorted(seen) == list(range(7))
    assert make_executor("processes", 1).name == "serial" and make_executor("processes", 2).name == "processes"
    with pytest.raises(ValueError, match="valid: serial, processes, ray"):
        make_executor("dask", 2)


def _fails_on_zero(shared, item):
    if item == 0:
        raise ValueError("item 0 is bad")
    return item


def test_a_failing_task_in_the_process_pool_raises_its_error_and_leaves_no_worker_behind():
    import multiprocessing

    before = set(multiprocessing.active_children())  # other tests' long-lived helpers are not this pool's
    with pytest.raises(ValueError, match="item 0 is bad"):
        ProcessExecutor(2).map(_fails_on_zero, range(6))
    deadline = time.monotonic() + 10  # terminated workers are reaped by the pool's manager thread
    while set(multiprocessing.active_children()) - before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(multiprocessing.active_children()) - before == set()


def test_ctx_map_runs_plain_and_shared_functions_on_the_study_executor(make_ctx):
    import functools

    ctx = make_ctx()
    assert ctx.executor.name == "serial"
    assert ctx.map(functools.partial(pow, 2), [1, 3, 5]) == [2, 8, 32]
    ctx.workers = 2
    assert ctx.executor.name == "processes"
    assert ctx.map(functools.partial(pow, 2), [1, 3, 5]) == [2, 8, 32]
    assert ctx.map(_affine, [1, 2], shared={"a": 10}) == [11, 21]


def test_executor_ray_without_the_extra_is_exit_2_naming_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(DDProbeError, match=r"ddprobe\[ray\]"):
        make_executor("ray", 2)
    spec = _spec(tmp_path, "processes")
    result = CliRunner().invoke(app, ["run", str(spec), "--executor", "ray", "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2, result.output
    assert 'pip install "ddprobe[ray]"' in " ".join(result.output.split())
    assert "Traceback" not in result.output
    bad = CliRunner().invoke(app, ["run", str(spec), "--executor", "dask", "-q"])
    assert bad.exit_code == 2 and "study.executor" in bad.output and "'serial', 'processes' or 'ray'" in bad.output


def test_a_spec_naming_an_unknown_executor_is_a_spec_error(tmp_path):
    from ddprobe.errors import SpecError
    from ddprobe.spec import load_spec

    path = _spec(tmp_path, "processes")
    path.write_text(path.read_text().replace('executor = "processes"', 'executor = "dask"'))
    with pytest.raises(SpecError, match="study.executor"):
        load_spec(path)


# -- Ray ---------------------------------------------------------------------------------------------------------

def _fail_once(marker_dir: str, item: int) -> int:
    """Raises the first time it runs for ``item`` (a marker file remembers), then returns ``2 * item``."""
    marker = Path(marker_dir) / f"attempted-{item}"
    if not marker.exists():
        marker.write_text("1")
        raise RuntimeError(f"first attempt at {item} fails")
    return 2 * item


def _die_once(marker_dir: str, item: int) -> int:
    """Kills its worker process the first time it runs for ``item``, then returns ``2 * item``."""
    import os

    marker = Path(marker_dir) / f"died-{item}"
    if not marker.exists():
        marker.write_text("1")
        os._exit(1)
    return 2 * item


def test_ray_retries_a_task_whose_worker_died(ray_local, tmp_path):
    ex = make_executor("ray", 2, RayOptions(max_retries=1, retry_exceptions=False))
    assert ex.map(_die_once, [4], shared=str(tmp_path)) == [8]


def test_ray_retries_a_task_that_raises_once(ray_local, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    ex = make_executor("ray", 2, RayOptions(max_retries=1))
    assert ex.map(_fail_once, [1, 2, 3], shared=str(tmp_path / "a")) == [2, 4, 6]
    no_retry = make_executor("ray", 2, RayOptions(max_retries=0))
    with pytest.raises(RuntimeError, match="first attempt at 5 fails"):  # the task's own exception type
        no_retry.map(_fail_once, [5], shared=str(tmp_path / "b"))
    ex.close()
    assert ray_local.is_initialized()  # an instance the executor did not start is left running


def test_ray_ships_shared_once_and_workers_use_one_thread(ray_local):
    ex = make_executor("ray", 2)
    handle = ex.share({"a": 5})
    assert ex.map(_affine, range(4), shared=handle) == [5 * i + 1 for i in range(4)]
    assert ex.map(_affine, [7], shared=handle) == [36]
    assert ex.workers == 2 and ex.parallel("cpu") and not ex.parallel("cuda")


def test_a_study_gives_the_same_report_metrics_serially_in_processes_and_on_ray(ray_local, tmp_path):
    """Agreement pools (stacked), leave-one-out retrainings, evaluate seeds, Hessian checkpoints and a third-party
    probe's ctx.map on three executors."""
    torch.set_num_threads(1)  # as in every worker, so that reductions add in the same order
    runs = {}
    for executor in ("serial", "processes", "ray"):
        out = tmp_path / f"out-{executor}"
        results = run_study(_spec(tmp_path, executor), out)
        assert not results.errors, results.errors
        runs[executor] = _metrics(out)
    assert set(runs["serial"]) == {"agreement", "influence", "mapped", "evaluate", "hessian"}
    assert runs["processes"] == runs["serial"]
    assert runs["ray"] == runs["serial"]
    assert ray_local.is_initialized()


def test_ci_runs_exactly_the_readme_test_command_with_the_ray_extra():
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    command = 'pip install -e ".[test,ray]" && pytest'
    assert f"```bash\n{command}\n```" in readme
    assert (root / ".ci" / "run").read_text().rstrip().splitlines()[-1] == command


def test_plan_estimate_for_n_workers_spreads_each_bag_over_them():
    from ddprobe.plan import Entry, Plan, PlanItem

    bag = PlanItem("10 retrainings", count=10, seconds=10.0)
    single = PlanItem("one pretraining", count=1, seconds=2.0)
    cached = PlanItem("cached pool", count=50, seconds=50.0, cached=True)
    plan = Plan("s", "cpu", "/c", [Entry("probe", "p", "k", "to compute", [bag, single, cached], seconds=12.0,
                                         planned=True),
                                   Entry("probe", "q", "k", "cached", [PlanItem("x", count=4, seconds=4.0)])],
                {}, 12.0, [])
    assert plan.seconds_with(1) == pytest.approx(12.0)
    assert plan.seconds_with(4) == pytest.approx(3 * 1.0 + 2.0)  # ceil(10 / 4) rounds of one retraining
    assert plan.seconds_with(4, task_overhead=0.1) == pytest.approx(3 * 1.1 + 2.0)
    assert plan.seconds_with(100) == pytest.approx(1.0 + 2.0)


def test_plan_estimate_for_n_workers_runs_the_distilled_sets_as_one_bag():
    from ddprobe.plan import Entry, Plan, PlanItem

    def distilled(name: str, seconds: float, experts: PlanItem | None = None) -> Entry:
        items = [PlanItem(f"{name} iterations", count=1, seconds=seconds)] + ([experts] if experts else [])
        return Entry("distilled", name, "d", "to compute", items, seconds=sum(i.seconds for i in items),
                     planned=True)

    experts = PlanItem("4 experts", count=4, seconds=8.0)  # shared work, itself a bag (prepare, on the driver)
    plan = Plan("s", "cpu", "/c", [distilled("a", 6.0, experts), distilled("b", 4.0), distilled("c", 3.0),
                                   Entry("distilled", "cached", "d", "cached", [PlanItem("x", seconds=50.0)])],
                {}, 21.0, [])
    assert plan.seconds_with(1) == pytest.approx(21.0)
    # experts: 2 rounds of 2 s; sets: a (6) on one worker, b then c (4 + 3) on the other
    assert plan.seconds_with(2) == pytest.approx(4.0 + 7.0)
    assert plan.seconds_with(3) == pytest.approx(4.0 + 6.0)


def test_plan_estimate_for_n_workers_uses_steps_timed_at_one_thread_per_task():
    """Worker tasks train with one thread: their units are costed at one-thread step times, the driver's at its own."""
    from ddprobe.plan import Entry, Plan, PlanItem

    bag = PlanItem("10 retrainings", count=10, seconds=10.0, worker_seconds=4.0)
    single = PlanItem("one pretraining", count=1, seconds=2.0, worker_seconds=5.0)
    sets = [Entry("distilled", n, "d", "to compute", [PlanItem(n, seconds=s, worker_seconds=w)], seconds=s,
                  planned=True) for n, s, w in (("a", 6.0, 3.0), ("b", 4.0, 2.0))]
    plan = Plan("s", "cpu", "/c", [Entry("probe", "p", "k", "to compute", [bag, single], seconds=12.0, planned=True),
                                   *sets], {}, 22.0, [])
    assert plan.seconds_with(1) == pytest.approx(22.0)  # everything on the driver
    assert plan.seconds_with(2) == pytest.approx(5 * 0.4 + 2.0 + 3.0)  # bag and sets in tasks; single on driver
    only_one_set = Plan("s", "cpu", "/c", sets[:1], {}, 6.0, [])
    assert only_one_set.seconds_with(2) == pytest.approx(6.0)  # one set is distilled on the driver


def test_plan_times_worker_units_at_one_thread_when_the_driver_uses_more(tmp_path):
    from ddprobe.plan import plan_study
    from ddprobe.spec import load_spec
    from ddprobe.threads import available_cores

    if available_cores()[0] < 2:
        pytest.skip("needs 2 cores for a driver with 2 threads")
    spec = load_spec({"study": {"workers": 2, "control": False, "cache_dir": str(tmp_path)},
                      "models": {"mlp": {"arch": "mlp", "hidden": 16}},
                      "distilled": {"r": {"distiller": "random", "ipc": 1}},
                      "probe": [{"kind": "evaluate", "seeds": 3, "models": ["mlp"]}]})
    plan = plan_study(spec, threads=2)
    (item,) = [i for e in plan.entries if e.name == "evaluate" for i in e.items]
    assert item.count == 3 and item.seconds > 0 and item.worker_seconds > 0
    assert item.worker_seconds != item.seconds  # timed separately, at one thread
    plan = plan_study(spec, threads=1)
    (item,) = [i for e in plan.entries if e.name == "evaluate" for i in e.items]
    assert item.worker_seconds == item.seconds  # the driver already times with one thread
