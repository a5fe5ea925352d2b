"""Independent distilled sets run as one bag on the study's executor, with the numbers of a serial run.

The sets of a study that are neither imported nor cached are distilled one task per set (serially, in local
processes, or on Ray); each distiller's ``prepare`` runs first on the driver, the driver writes each set to the
cache as it arrives, a failing set fails alone, and a worker that cannot see the driver's cache uses its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ddprobe.study import run_study

# A third-party distiller (a plugin file): its ``prepare`` does shared work on the driver and caches it; its
# ``distill`` needs that work, and records the process it ran in.
DISTILLER = '''
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from ddprobe import hookimpl


class Blend:
    name = "blend"
    description = "the first ipc real images of each class, blended with the mean image that prepare() cached"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        fail: bool = False
        log: str = ""

    def prepare(self, real, ipc, options, ctx):
        with open(Path(options.log) / "prepared", "a") as fh:
            fh.write(f"{ctx.name} {os.getpid()}\\n")
        ctx.cache.store_tensors("blend-mean", {"n": len(real.train)}, {"mean": real.train.images.mean(0)})

    def distill(self, real, ipc, options, ctx):
        import torch

        from ddprobe.data import DistilledSet, Manifest

        (Path(options.log) / f"distilled-{ctx.name}").write_text(str(os.getpid()))
        if options.fail:
            raise ValueError(f"{ctx.name} was asked to fail")
        got = ctx.cache.lookup_tensors("blend-mean", {"n": len(real.train)})
        if got is None:
            raise RuntimeError("prepare() did not run before distill(), or its cache is out of reach")
        index = torch.cat([idx[:ipc] for idx in real.train.class_indices()])
        sub = real.train.subset(index)
        images = 0.5 * sub.images + 0.5 * got["mean"]
        return DistilledSet(images, sub.hard_labels.clone(), real.classes, manifest=Manifest(ipc=ipc))


@hookimpl
def register_distillers(register):
    register(Blend())
'''

SPEC = """
[study]
name = "bag"
seed = 3
control = true
workers = 2
executor = "{executor}"
cache_dir = "cache"
plugins = ["../blend.py"]

[data]
train_per_class = 40

[train]
steps = 20

[models]
mlp = {{ arch = "mlp", hidden = 16 }}

[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 4
model = "mlp"
batch_real = 16

[distilled.mtt]
distiller = "mtt"
ipc = 1
model = "mlp"
iterations = 3
num_experts = 3
expert_train_epochs = 2
expert_epochs = 1
max_start_epoch = 1
syn_steps = 2
expert_batch = 64

[distilled.blend]
distiller = "blend"
ipc = 2
log = "{log}"

[distilled.broken]
distiller = "blend"
ipc = 1
fail = true
log = "{log}"

[[probe]]
kind = "evaluate"
seeds = 2

[report]
formats = ["json"]
"""


def _run(tmp_path: Path, executor: str) -> tuple[dict, Path]:
    (tmp_path / "blend.py").write_text(DISTILLER)
    d = tmp_path / executor
    log = d / "log"
    log.mkdir(parents=True)
    (d / "study.toml").write_text(SPEC.format(executor=executor, log=log.as_posix()))
    results = run_study(d / "study.toml", d / "out")
    assert results.exit_code == 3, results.errors  # the broken set fails; everything else runs
    return json.loads((d / "out" / "report.json").read_text()), d


def _sets(report: dict) -> dict[str, tuple]:
    return {n: (s["status"], s.get("sha256"), s.get("error")) for n, s in report["distilled"].items()}


def _metrics(report: dict) -> dict:
    return {p["id"]: {k: v for k, v in p["metrics"].items() if "seconds" not in k} for p in report["probes"]}


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in every worker, so that reductions add in the same order
    yield
    torch.set_num_threads(before)


def _check_bag(tmp_path: Path, executor: str, serial: dict) -> Path:
    report, d = _run(tmp_path, executor)
    assert _sets(report) == _sets(serial)
    assert _metrics(report) == _metrics(serial)
    assert list(report["distilled"]) == ["dm", "mtt", "blend", "broken", "random_ipc1", "random_ipc2"]
    log = d / "log"
    assert sorted(line.split()[0] for line in (log / "prepared").read_text().splitlines()) == ["blend", "broken"]
    driver = {line.split()[1] for line in (log / "prepared").read_text().splitlines()}
    assert driver == {str(os.getpid())}  # prepare() ran on the driver
    assert (log / "distilled-blend").read_text() != str(os.getpid())  # distill() ran in a worker
    return d


def test_distilled_sets_run_as_one_bag_in_processes_with_the_serial_numbers(tmp_path, one_thread):
    serial, d_serial = _run(tmp_path, "serial")
    assert (d_serial / "log" / "distilled-blend").read_text() == str(os.getpid())
    status = _sets(serial)
    assert (status["broken"][0], status["broken"][2]) == ("error", "ValueError: broken was asked to fail")
    assert all(s[0] == "ok" for n, s in status.items() if n != "broken")
    d = _check_bag(tmp_path, "processes", serial)
    # the driver wrote each set to the cache: a rerun distills nothing and gives the same report
    again = run_study(d / "study.toml", d / "out2")
    assert again.provenance["cache"]["distilled"]["misses"] == 1  # only the broken set is tried again
    assert not list((d / "cache").glob(".driver-*"))  # the token is gone when the bag ends


MTT_OPTIONS = """distiller = "mtt"
model = "mlp"
iterations = 2
num_experts = 3
expert_train_epochs = 2
expert_epochs = 1
max_start_epoch = 1
syn_steps = 2
"""


@pytest.mark.parametrize("no_cache", [False, True], ids=["cache", "no-cache"])
def test_mtt_experts_are_trained_once_on_the_driver_before_the_sets(tmp_path, one_thread, monkeypatch, no_cache):
    """Two MTT sets share their experts: prepare() trains them as a bag and caches them; neither set retrains,
    even under --no-cache (which distrusts earlier runs' entries, not this run's)."""
    import ddprobe.distill.mtt as mtt

    (tmp_path / "s.toml").write_text("""
[study]
seed = 1
control = false
workers = 2
cache_dir = "cache"
[data]
train_per_class = 30
[models]
mlp = { arch = "mlp", hidden = 8 }
[distilled.a]
ipc = 1
{MTT}[distilled.b]
ipc = 2
{MTT}[[probe]]
kind = "pixels"
[report]
formats = ["json"]
""".replace("{MTT}", MTT_OPTIONS))
    log = tmp_path / "experts.log"
    train_expert = mtt.train_expert

    def logged(ctx, spec, real, options, index):  # forked workers inherit the patch and append to the same file
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()} {index}\n")
        return train_expert(ctx, spec, real, options, index)

    monkeypatch.setattr(mtt, "train_expert", logged)
    results = run_study(tmp_path / "s.toml", tmp_path / "out", no_cache=no_cache)
    assert results.exit_code == 0, results.errors
    trained = [line.split() for line in log.read_text().splitlines()]
    assert sorted(i for _, i in trained) == ["0", "1", "2"]  # each expert once, though two sets use them
    assert str(os.getpid()) not in {pid for pid, _ in trained}  # as a bag of worker tasks, not on the driver
    entries = [p for p in (tmp_path / "cache" / "mtt-experts").iterdir() if not p.name.startswith(".")]
    assert len(entries) == 3


def test_a_worker_that_cannot_see_the_driver_cache_uses_its_own(tmp_path, monkeypatch, one_thread):
    """No shared filesystem: the task distills with the worker's cache and returns the set; the driver caches it."""
    from ddprobe.cache import Cache
    from ddprobe.sets import DistillTask, finish, run_task, set_key
    from ddprobe.spec import load_spec
    from ddprobe.study import data_key, load_real

    (tmp_path / "blend.py").write_text(DISTILLER)
    (tmp_path / "s.toml").write_text(SPEC.format(executor="ray", log=tmp_path.as_posix()).replace("../blend", "blend"))
    spec = load_spec(tmp_path / "s.toml")
    real = load_real(spec)
    dkey = data_key(spec, real)
    driver = Cache(tmp_path / "driver-cache")
    worker_home = tmp_path / "worker-cache"
    monkeypatch.setenv("DDPROBE_CACHE_DIR", str(worker_home))
    dspec = spec.distilled["mtt"]
    task = DistillTask(spec.study.seed, spec.models, spec.train, dspec, dkey, "cpu", str(driver.root), driver.salt,
                       True, ".driver-not-on-this-machine")
    made = run_task(real, task)
    assert made.error is None and made.set is not None
    assert not driver.root.exists()  # the worker wrote nothing where the driver's cache would be
    assert len([p for p in (worker_home / "mtt-experts").iterdir() if not p.name.startswith(".")]) == 3
    ds = finish(spec, dspec, made, real, driver, dkey)
    assert driver.has("distilled", set_key(spec, dspec, driver, dkey))
    assert ds.manifest.learned_lr is not None and ds.manifest.seed == spec.study.seed
    # a failure in the task comes back as the message a failure in the driver gives
    failed = run_task(real, DistillTask(spec.study.seed, spec.models, spec.train, spec.distilled["broken"], dkey,
                                        "cpu", str(driver.root), driver.salt, True, ".driver-x"))
    assert failed.set is None and failed.error == "ValueError: broken was asked to fail"


def test_distilled_sets_on_ray_give_the_serial_numbers(ray_local, tmp_path, one_thread):
    serial, _ = _run(tmp_path, "serial")
    _check_bag(tmp_path, "ray", serial)


STOPPER = '''
import os
import signal
import time
from pathlib import Path

from pydantic import BaseModel
from ddprobe import hookimpl


class Stopper:
    name = "stopper"
    description = "the first time, presses Ctrl-C on the driver from its worker; afterwards the first ipc images"

    class Options(BaseModel):
        marker: str = ""

    def distill(self, real, ipc, options, ctx):
        import torch

        from ddprobe.data import DistilledSet, Manifest

        marker = Path(options.marker)
        if not marker.exists():
            marker.write_text("stopped once")
            os.kill(os.getppid(), signal.SIGINT)  # the driver, which started this worker process
            time.sleep(30)
        index = torch.cat([idx[:ipc] for idx in real.train.class_indices()])
        sub = real.train.subset(index)
        return DistilledSet(sub.images.clone(), sub.hard_labels.clone(), real.classes, manifest=Manifest(ipc=ipc))


@hookimpl
def register_distillers(register):
    register(Stopper())
'''


def test_ctrl_c_during_the_bag_reports_the_sets_so_far_and_the_rerun_resumes(tmp_path, one_thread):
    (tmp_path / "stopper.py").write_text(STOPPER)
    (tmp_path / "blend.py").write_text(DISTILLER)
    (tmp_path / "s.toml").write_text(f"""
[study]
control = false
workers = 2
cache_dir = "cache"
plugins = ["stopper.py", "blend.py"]
[data]
train_per_class = 20
[distilled.quick]
distiller = "blend"
ipc = 1
log = "{tmp_path.as_posix()}"
[distilled.stops]
distiller = "stopper"
ipc = 1
marker = "{(tmp_path / 'marker').as_posix()}"
[[probe]]
kind = "pixels"
[report]
formats = ["json"]
""")
    first = run_study(tmp_path / "s.toml", tmp_path / "out")
    assert first.interrupted and first.exit_code == 130 and first.probes == []
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["distilled"]["stops"]["status"] == "interrupted"
    assert report["distilled"]["quick"]["status"] in ("ok", "interrupted")  # it may not have arrived yet
    assert not list((tmp_path / "cache").glob(".driver-*"))
    again = run_study(tmp_path / "s.toml", tmp_path / "out")
    assert again.exit_code == 0, again.errors
    done_before = report["distilled"]["quick"]["status"] == "ok"
    assert again.provenance["cache"]["distilled"]["hits"] == (1 if done_before else 0)


def test_a_driver_token_left_in_the_cache_is_not_an_entry(tmp_path):
    """A driver killed mid-bag leaves its token file: the cache commands neither list it nor refuse the folder."""
    from ddprobe.cache import scan

    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    (root / ".driver-0123456789abcdef").write_text("x")
    assert scan.is_cache(root)
    assert list(scan.scan(root)) == []
    scan.clear(root)
    assert list(root.iterdir()) == []


def test_the_conformance_check_runs_prepare_before_distill(tmp_path):
    """A distiller whose distill() needs what its prepare() cached passes ddprobe.testing.check_distiller."""
    import importlib.util

    from ddprobe.testing import check_distiller

    (tmp_path / "blend_mod.py").write_text(DISTILLER)
    loaded = importlib.util.spec_from_file_location("blend_mod", tmp_path / "blend_mod.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    ds = check_distiller(module.Blend(), ipc=2, options={"log": tmp_path.as_posix()})
    assert len(ds) == 2 * len(ds.classes)
    assert (tmp_path / "prepared").read_text().count("\n") == 2  # once before each of the two runs


DIES = '''
import os

from pydantic import BaseModel, ConfigDict
from ddprobe import hookimpl


class Dies:
    name = "dies"
    description = "its worker process exits in the middle of distilling (an out-of-memory kill, a lost node)"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def distill(self, real, ipc, options, ctx):
        os._exit(1)


@hookimpl
def register_distillers(register):
    register(Dies())
'''


def test_a_worker_that_dies_fails_the_unfinished_sets_not_the_study(tmp_path, one_thread):
    (tmp_path / "dies.py").write_text(DIES)
    (tmp_path / "s.toml").write_text("""
[study]
control = true
workers = 2
cache_dir = "cache"
plugins = ["dies.py"]
[data]
train_per_class = 20
[distilled.dead]
distiller = "dies"
ipc = 1
[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 2
[[probe]]
kind = "pixels"
[report]
formats = ["json"]
""")
    results = run_study(tmp_path / "s.toml", tmp_path / "out")
    assert results.exit_code == 3 and not results.interrupted
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    dead = report["distilled"]["dead"]
    assert dead["status"] == "error" and dead["error"].startswith("BrokenProcessPool: ")
    assert "run the study again" in dead["error"]
    assert report["distilled"]["random_ipc1"]["status"] == "ok"  # the control and the probes still ran
    assert [p["status"] for p in report["probes"]] == ["ok"]
    assert not list((tmp_path / "cache").glob(".driver-*"))
