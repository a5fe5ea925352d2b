"""The cache verifies what it reads: damaged entries of every kind are recomputed with a warning, never trusted;
failed probes leave nothing a rerun reads; claimed hashes are checked; probes cannot change what the next one
sees; ``ddprobe cache`` lists, verifies, prunes and clears."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from ddprobe.cache import Cache, CacheWarning
from ddprobe.cache.integrity import DONE, sidecar
from ddprobe.spec import load_spec
from ddprobe.study import run_study


# -- ways to damage a file ------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    """Flip 64 bytes in the middle of the file: the size stays the same, only the digest can tell."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for i in range(mid, min(len(data), mid + 64)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _entries(root: Path, kind: str) -> list[Path]:
    return sorted(p for p in (root / kind).iterdir() if not p.name.startswith("."))


# -- unit level: each kind of Cache entry -----------------------------------------------------------------------------
def _damage_entry(entry: Path, how: str, other: Path | None = None) -> None:
    target = entry / "tensors.safetensors"
    if how == "truncate":
        truncate(target)
    elif how == "flip":
        flip(target)
    elif how == "no-digest":
        (entry / DONE).unlink()
    elif how == "replace":  # a valid file of the same kind, with other numbers
        shutil.copy(other / "tensors.safetensors", target)
    elif how == "garbled-digest":
        (entry / DONE).write_text("{not json")


DAMAGE = ["truncate", "flip", "no-digest", "replace", "garbled-digest"]


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_tensors_entry_is_recomputed_with_a_warning(tmp_path, how):
    cache = Cache(tmp_path, salt="t")
    calls = []

    def compute(value: float):
        calls.append(value)
        return {"x": torch.full((1000,), value)}

    first = cache.tensors("k", {"n": 1}, lambda: compute(1.0))
    cache.tensors("k", {"n": 2}, lambda: compute(2.0))
    entry = cache.path("k", cache.key("k", {"n": 1}))
    _damage_entry(entry, how, other=cache.path("k", cache.key("k", {"n": 2})))

    again = Cache(tmp_path, salt="t")
    with pytest.warns(CacheWarning, match=f"cache entry k/{entry.name}"):
        got = again.tensors("k", {"n": 1}, lambda: compute(1.0))
    assert torch.equal(got["x"], first["x"]) and calls == [1.0, 2.0, 1.0]
    assert again.stats()["k"] == {"hits": 0, "misses": 1}  # a bad entry is not a hit
    assert len(again.warnings) == 1 and str(entry) in again.warnings[0]
    # the recomputed entry was stored and is good: a third session reads it without computing or warning
    third = Cache(tmp_path, salt="t")
    assert torch.equal(third.tensors("k", {"n": 1}, lambda: compute(9.0))["x"], first["x"])
    assert third.stats()["k"] == {"hits": 1, "misses": 0} and third.warnings == [] and len(calls) == 3


@pytest.mark.parametrize("how", ["flip", "truncate", "replace"])
def test_damaged_model_is_retrained(tmp_path, how):
    def build():
        torch.manual_seed(0)
        return torch.nn.Linear(64, 10)

    def train(net):
        with torch.no_grad():
            net.weight.add_(1.0)

    cache = Cache(tmp_path, salt="t")
    trained = cache.model("models", {"m": 1}, build, train).state_dict()
    other = torch.nn.Linear(64, 10)
    cache.save_tensors("models", "other", other.state_dict())
    _damage_entry(cache.path("models", cache.key("models", {"m": 1})), how, other=cache.path("models", "other"))
    again = Cache(tmp_path, salt="t")
    with pytest.warns(CacheWarning):
        net = again.model("models", {"m": 1}, build, train)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in trained.items())
    assert again.stats()["models"] == {"hits": 0, "misses": 1}


def test_model_entry_of_another_shape_is_retrained(tmp_path):
    cache = Cache(tmp_path, salt="t")
    cache.save_tensors("models", cache.key("models", {"m": 1}), {"weight": torch.zeros(3)})  # sealed, but wrong
    with pytest.warns(CacheWarning, match="not a state of this model"):
        net = cache.model("models", {"m": 1}, lambda: torch.nn.Linear(2, 2), lambda n: None)
    assert net.weight.shape == (2, 2) and cache.stats()["models"] == {"hits": 0, "misses": 1}


def test_damaged_json_entry_is_recomputed(tmp_path):
    cache = Cache(tmp_path, salt="t")
    assert cache.json("j", {"a": 1}, lambda: {"v": 1}) == {"v": 1}
    entry = cache.path("j", cache.key("j", {"a": 1}))
    (entry / "value.json").write_text('{"v":2}')  # an edit by hand: same length, other content
    again = Cache(tmp_path, salt="t")
    with pytest.warns(CacheWarning, match="does not match the sha256"):
        assert again.json("j", {"a": 1}, lambda: {"v": 1}) == {"v": 1}


def test_store_that_does_not_read_back_is_not_cached(tmp_path):
    cache = Cache(tmp_path, salt="t")

    def fill(d: Path) -> None:
        (d / "value.json").write_text("")

    with pytest.warns(CacheWarning, match="does not read back"):
        stored = cache.store_directory("j", "k", fill, check=lambda d: json.loads((d / "value.json").read_text()))
    assert not stored and not cache.path("j", "k").exists()
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "j").iterdir())


# -- distillation checkpoints ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["truncate", "flip", "empty", "no-sidecar"])
def test_damaged_checkpoint_is_ignored_with_a_warning(tmp_path, how):
    from ddprobe.distill.common import Checkpointer

    ctx = SimpleNamespace(checkpoint_dir=tmp_path / "ckpt", cache=Cache(tmp_path, salt="t"))
    ck = Checkpointer(ctx, "key", every=1)
    ck.save({"iteration": 3, "images": torch.randn(100, 8)})
    assert ck.load()["iteration"] == 3
    if how == "truncate":
        truncate(ck.path)
    elif how == "flip":
        flip(ck.path)
    elif how == "empty":
        ck.path.write_bytes(b"")
    else:
        sidecar(ck.path).unlink()
    with pytest.warns(CacheWarning, match="distillation checkpoint .* starting over"):
        assert ck.load() is None
    assert not ck.path.exists() and not sidecar(ck.path).exists()


# -- end to end: a study's cache damaged kind by kind ------------------------------------------------------------------
SPEC = """
[study]
name = "integrity"
seed = 1
plugins = ["probes_for_tests.py"]

[train]
steps = 10

[pretrain]
epochs = 2
batch_size = 256

[models]
convnet = {{ arch = "convnet", width = 4, depth = 1 }}

[distilled.rand]
distiller = "random"
ipc = 2

{extra}

[[probe]]
kind = "evaluate"
seeds = 1

[[probe]]
kind = "recognition"

[[probe]]
kind = "pixels"
{units}"""

UNIT_PROBES = """
[[probe]]
kind = "hessian"
model = "convnet"
recipe = {{ steps = 8 }}
checkpoints = 2
real_subsample = 64
estimator = "hutchinson"
budget = 12
rtol = 0.2

[[probe]]
kind = "influence"
sets = ["rand"]
inits = 1
recipe = {{ steps = 8 }}
gallery_classes = 1
backends = ["explicit"]
"""

PLUGIN = '''
import pandas as pd
from pydantic import BaseModel
from ddprobe import hookimpl, ProbeResult


class Opts(BaseModel):
    pass


class Empty:
    name = "empty"
    description = "an ok result with an empty table (what a study without sets produces)"
    Options = Opts

    def run(self, ctx, options):
        return ProbeResult(metrics={"n": 1.0}, tables={"none": pd.DataFrame()}, summary="nothing")


class Mutate:
    name = "mutate"
    description = "zeroes a distilled set in place"
    Options = Opts

    def run(self, ctx, options):
        for ds in ctx.distilled.values():
            ds.images.mul_(0)
        return ProbeResult(metrics={"n": 1.0})


class MutateReal:
    name = "mutate_real"
    description = "zeroes the real test images in place, then fails"
    Options = Opts

    def run(self, ctx, options):
        ctx.real.test.images.mul_(0)
        raise RuntimeError("and then it broke")


class Fail:
    name = "fail"
    description = "raises after writing a figure"
    Options = Opts

    def run(self, ctx, options):
        ctx.figure_path("x").write_bytes(b"")
        raise RuntimeError("broke")


class Vandal:
    name = "vandal"
    description = "a distiller that scales the real training images in place"
    Options = Opts

    def distill(self, real, ipc, options, ctx):
        from ddprobe import DistilledSet, Manifest

        real.train.images.mul_(2)
        idx = [int(ix[0]) for ix in real.train.class_indices()]
        sub = real.train.subset(idx)
        return DistilledSet(sub.images.clone(), sub.labels.clone(), list(real.classes), manifest=Manifest())


@hookimpl
def register_probes(register):
    for p in (Empty(), Mutate(), MutateReal(), Fail()):
        register(p)


@hookimpl
def register_distillers(register):
    register(Vandal())
'''


def make_spec(tmp_path: Path, extra: str = "", units: bool = False) -> Path:
    """The small study; ``units``: with the hessian and influence probes, whose units are cached on their own."""
    (tmp_path / "probes_for_tests.py").write_text(PLUGIN)
    path = tmp_path / "study.toml"
    path.write_text(SPEC.format(extra=extra, units=UNIT_PROBES.format() if units else ""))
    return path


def run(path: Path, out: str = "out", **kw):
    return run_study(load_spec(path), path.parent / out, reporters=["json"], **kw)


def _metrics(results) -> dict:
    return {p.id: p.result.metrics for p in results.probes}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """One clean run; tests copy its cache and damage the copy."""
    from ddprobe import registry
    from ddprobe.plugins import load_plugins

    tmp = tmp_path_factory.mktemp("baseline")
    pm = load_plugins()
    before = set(pm.get_plugins())
    os.environ["DDPROBE_CACHE_DIR"] = str(tmp / "cache")
    try:
        results = run(make_spec(tmp, units=True))
    finally:
        del os.environ["DDPROBE_CACHE_DIR"]
        for plugin in set(pm.get_plugins()) - before:  # the tests load the same plugin file from their folders
            pm.unregister(plugin)
        registry.invalidate()
    assert results.exit_code == 0, results.errors
    return tmp / "cache", _metrics(results)


CASES = {
    "models-flip": ("models", lambda e: flip(e / "tensors.safetensors")),
    "models-truncate": ("models", lambda e: truncate(e / "tensors.safetensors")),
    "hessian-checkpoints-flip": ("hessian-checkpoints", lambda e: flip(e / "tensors.safetensors")),
    "influence-loo-truncate": ("influence-loo", lambda e: truncate(e / "tensors.safetensors")),
    "influence-loo-meta-deleted": ("influence-loo", lambda e: (e / "meta.json").unlink()),
    "distilled-flip": ("distilled", lambda e: flip(e / "set.safetensors")),
    "distilled-no-digest": ("distilled", lambda e: (e / DONE).unlink()),
    "distilled-sidecar-deleted": ("distilled", lambda e: (e / "set.json").unlink()),
    "record-truncated": ("probe-results", lambda e: truncate(e / "record.json")),
    "record-edited": ("probe-results", lambda e: (e / "record.json").write_text(
        (e / "record.json").read_text().replace('"metrics": {"', '"metrics": {"x'))),
    "record-deleted": ("probe-results", lambda e: (e / "record.json").unlink()),
    "table-garbled": ("probe-results", lambda e: [flip(t) for t in e.glob("table-*.csv")]),
    "figure-deleted": ("probe-results", lambda e: [f.unlink() for f in e.glob("figure-*.png")]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_study_cache_is_recomputed_with_the_same_numbers(baseline, tmp_path, monkeypatch, case):
    cache_dir, expected = baseline
    kind, damage = CASES[case]
    shutil.copytree(cache_dir, tmp_path / "cache")
    monkeypatch.setenv("DDPROBE_CACHE_DIR", str(tmp_path / "cache"))
    if kind in ("models", "hessian-checkpoints", "influence-loo"):  # probes then read these entries again
        shutil.rmtree(tmp_path / "cache" / "probe-results")
    needs = {"table": "table-*.csv", "figure": "figure-*.png"}.get(case.split("-")[0], "*")
    damaged = [e for e in _entries(tmp_path / "cache", kind) if list(e.glob(needs))]
    for entry in damaged:
        damage(entry)
    results = run(make_spec(tmp_path, units=True))
    assert results.exit_code == 0, results.errors
    assert _metrics(results) == expected
    warnings = results.provenance["cache_warnings"]
    assert len(warnings) == len(damaged)
    for entry in damaged:
        assert any(f"{kind}/{entry.name}" in w and "recomputing" in w for w in warnings)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["provenance"]["cache_warnings"] == warnings
    # the recomputed entries were stored: the next run is clean and served from the cache
    again = run(make_spec(tmp_path, units=True))
    assert again.provenance["cache_warnings"] == [] and _metrics(again) == expected
    assert all(p.cached for p in again.probes)


def test_cached_set_that_fails_to_load_is_a_miss_not_a_hit(baseline, tmp_path, monkeypatch):
    cache_dir, _ = baseline
    shutil.copytree(cache_dir, tmp_path / "cache")
    monkeypatch.setenv("DDPROBE_CACHE_DIR", str(tmp_path / "cache"))
    for entry in _entries(tmp_path / "cache", "distilled"):
        truncate(entry / "set.safetensors")
    with pytest.warns(CacheWarning):
        results = run(make_spec(tmp_path))
    assert results.provenance["cache"]["distilled"] == {"hits": 0, "misses": 1}


def test_empty_table_and_failed_probe_leave_nothing_a_rerun_trusts(tmp_path):
    path = make_spec(tmp_path, extra='[[probe]]\nkind = "empty"\n\n[[probe]]\nkind = "fail"')
    first = run(path)
    assert first.exit_code == 3
    again = run(path)  # used to crash with pandas EmptyDataError
    assert again.exit_code == 3 and again.provenance["cache_warnings"] == []
    by_id = {p.id: p for p in again.probes}
    assert by_id["empty"].cached and by_id["empty"].result.tables["none"].empty
    assert not by_id["fail"].cached and by_id["fail"].status == "error"
    assert again.provenance["cache"]["probe-results"] == {"hits": 4, "misses": 1}


def test_probe_that_changes_a_set_in_place_fails_and_nothing_is_cached(tmp_path):
    plain = run(make_spec(tmp_path), out="plain")
    path = make_spec(tmp_path, extra='[[probe]]\nkind = "mutate"\n\n[[probe]]\nkind = "mutate_real"')
    # the mutating probes run first, so every later probe would see zeroed data if they could change it
    text = path.read_text()
    tail = text[text.index('[[probe]]\nkind = "evaluate"'):]
    path.write_text(text.replace(tail, "") + tail)
    results = run(path, no_cache=True)
    by_id = {p.id: p for p in results.probes}
    assert by_id["mutate"].status == "error"
    assert "probe 'mutate' changed distilled set 'rand' in place" in by_id["mutate"].error
    assert by_id["mutate_real"].status == "error"  # it raised; the real data it zeroed is reloaded
    for pid in ("evaluate", "recognition", "pixels"):
        assert by_id[pid].result.metrics == plain.probes[[p.id for p in plain.probes].index(pid)].result.metrics
    # nothing was cached for the mutating probes: the same spec reruns them (and they fail again)
    again = run(path)
    assert {p.id: p.cached for p in again.probes}["mutate"] is False


def test_distiller_that_changes_the_real_data_fails_and_the_study_goes_on_unchanged(tmp_path):
    plain = run(make_spec(tmp_path), out="plain")
    results = run(make_spec(tmp_path, extra='[distilled.bad]\ndistiller = "vandal"\nipc = 1'))
    assert results.distilled["bad"].status == "error" and results.exit_code == 3
    assert "distiller 'vandal' changed the real data in place" in results.distilled["bad"].error
    for before, after in zip(plain.probes, results.probes, strict=True):
        kept = {k: v for k, v in after.result.metrics.items() if k in before.result.metrics}
        assert kept == before.result.metrics and kept
    # cached: rand and the control random_ipc1 the failed set's ipc added, not the set made from changed data
    assert len(_entries(Path(os.environ["DDPROBE_CACHE_DIR"]), "distilled")) == 2
    assert results.provenance["cache"]["distilled"] == {"hits": 1, "misses": 2}


def test_imported_set_whose_manifest_claims_another_hash_is_refused(tmp_path, digits):
    from ddprobe.data import DistilledSet, Manifest, load_distilled, save_distilled

    g = torch.Generator().manual_seed(0)
    honest = DistilledSet(torch.randn(10, 1, 8, 8, generator=g), torch.arange(10), digits.classes, Manifest())
    save_distilled(honest, tmp_path / "a")
    liar = DistilledSet(torch.randn(10, 1, 8, 8, generator=g), torch.arange(10), digits.classes,
                        Manifest(sha256=honest.manifest.sha256))
    save_distilled(liar, tmp_path / "b")  # claims a's hash
    assert load_distilled(tmp_path / "a.safetensors").manifest.sha256 == honest.manifest.sha256
    from ddprobe.errors import DataMismatchError

    with pytest.raises(DataMismatchError, match=r"b\.safetensors: the manifest claims sha256"):
        load_distilled(tmp_path / "b.safetensors")
    # in a study: the lying file is that set's error (naming the file); the honest one runs
    spec = make_spec(tmp_path)
    spec.write_text(spec.read_text().replace(
        '[distilled.rand]\ndistiller = "random"\nipc = 2',
        '[distilled.a]\npath = "a.safetensors"\n\n[distilled.b]\npath = "b.safetensors"'))
    results = run(spec)
    assert results.distilled["a"].status == "ok" and results.distilled["a"].sha256 == honest.manifest.sha256
    assert results.distilled["b"].status == "error" and "b.safetensors" in results.distilled["b"].error


# -- the conformance kit --------------------------------------------------------------------------------------------
def test_conformance_kit_catches_a_probe_that_changes_its_inputs(ddprobe_real, tmp_path):
    from pydantic import BaseModel, ConfigDict

    from ddprobe.results import ProbeResult
    from ddprobe.testing import ConformanceError, check_probe

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    class Scales:
        name = "scales"
        description = "scales every set in place"

        def run(self, ctx, options):
            for ds in ctx.distilled.values():
                ds.images.mul_(2)
            return ProbeResult({"n": 1.0})

    Scales.Options = Options
    changed = "modified the real data or a distilled set in place: distilled set .tiny., distilled set .tiny_b."
    with pytest.raises(ConformanceError, match=changed):
        check_probe(Scales(), real=ddprobe_real, directory=tmp_path)


# -- ddprobe cache ----------------------------------------------------------------------------------------------------
def _cli(*args: str):
    from ddprobe.cli import app

    return CliRunner().invoke(app, list(args))


def _small_cache(root: Path) -> Cache:
    cache = Cache(root, salt="t")
    for i in range(3):
        cache.tensors("models", {"i": i}, lambda i=i: {"w": torch.full((256,), float(i))})
    cache.json("values", {"a": 1}, lambda: [1, 2])
    ctx = SimpleNamespace(checkpoint_dir=root / "distill-checkpoints", cache=cache)
    from ddprobe.distill.common import Checkpointer

    Checkpointer(ctx, "run", every=1).save({"iteration": 1})
    return cache


def test_cache_ls_shows_kinds_sizes_and_entries(tmp_path):
    _small_cache(tmp_path / "c")
    res = _cli("cache", "ls", "--cache-dir", str(tmp_path / "c"))
    assert res.exit_code == 0, res.output
    assert "5 entries" in res.output
    lines = {line.split()[0]: line.split() for line in res.output.splitlines()[2:]}
    assert lines["models"][1] == "3" and lines["values"][1] == "1" and lines["distill-checkpoints"][1] == "1"
    res = _cli("cache", "ls", "-d", str(tmp_path / "c"), "--entries")
    assert res.output.count("models/") == 3


def test_cache_verify_and_prune_find_and_remove_bad_entries(tmp_path):
    cache = _small_cache(tmp_path / "c")
    res = _cli("cache", "verify", "-d", str(tmp_path / "c"))
    assert res.exit_code == 0 and "5 entries checked" in res.output and "all good" in res.output
    bad = cache.path("models", cache.key("models", {"i": 1}))
    flip(bad / "tensors.safetensors")
    (tmp_path / "c" / "distill-checkpoints" / "run.pt").write_bytes(b"xx")
    res = _cli("cache", "verify", "-d", str(tmp_path / "c"))
    assert res.exit_code == 1
    assert f"bad: models/{bad.name}" in res.output and "does not match the sha256" in res.output
    assert "bad: distill-checkpoints/run" in res.output and "2 bad" in res.output
    res = _cli("cache", "prune", "-d", str(tmp_path / "c"), "--dry-run")
    assert "would remove" in res.output and bad.exists()
    res = _cli("cache", "prune", "-d", str(tmp_path / "c"))
    assert res.exit_code == 0 and "2 entries removed" in res.output and not bad.exists()
    assert _cli("cache", "verify", "-d", str(tmp_path / "c")).exit_code == 0
    # entries not used for a day go with --older-than 1; a recent read counts as use
    old = cache.path("models", cache.key("models", {"i": 0}))
    os.utime(old / DONE, (0, 0))
    res = _cli("cache", "prune", "-d", str(tmp_path / "c"), "--older-than", "1")
    assert "1 entry removed" in res.output and not old.exists()
    assert cache.path("models", cache.key("models", {"i": 2})).exists()


def test_cache_clear_asks_first(tmp_path):
    _small_cache(tmp_path / "c")
    (tmp_path / "c" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(__import__("ddprobe.cli", fromlist=["app"]).app,
                             ["cache", "clear", "-d", str(tmp_path / "c")], input="n\n")
    assert res.exit_code == 1 and (tmp_path / "c" / "models").exists()
    res = _cli("cache", "clear", "-d", str(tmp_path / "c"), "--yes")
    assert res.exit_code == 0 and "cleared" in res.output
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["notes.txt"]  # only what ddprobe wrote goes


# -- workers ----------------------------------------------------------------------------------------------------------
WORKERS_SPEC = """
[study]
name = "workers"
seed = 0
device = "cpu"
workers = {workers}

[data]
dataset = "digits"

[train]
steps = 20
batch_size = "full"

[pretrain]
epochs = 2
batch_size = 256

[models]
convnet = {{ arch = "convnet", width = 4, depth = 1 }}

[distilled.r]
distiller = "random"
ipc = 1

[[probe]]
kind = "hessian"
model = "convnet"
recipe = {{ steps = 12 }}
checkpoints = 3
real_subsample = 64
estimator = "hutchinson"
budget = 12
rtol = 0.1

[[probe]]
kind = "influence"
sets = ["r"]
inits = 1
recipe = {{ steps = 15 }}
gallery_classes = 1
backends = ["explicit"]
"""


@pytest.mark.slow
def test_workers_do_not_change_results_with_one_thread_per_process(tmp_path, monkeypatch):
    """docs/index.md: with one thread in every process, workers = 1 and workers = 2 give identical metrics."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        metrics = []
        for workers in (1, 2):
            monkeypatch.setenv("DDPROBE_CACHE_DIR", str(tmp_path / f"cache{workers}"))
            path = tmp_path / f"w{workers}.toml"
            path.write_text(WORKERS_SPEC.format(workers=workers))
            results = run(path, out=f"out{workers}")
            assert results.exit_code == 0, results.errors
            metrics.append(_metrics(results))
    finally:
        torch.set_num_threads(threads)
    assert metrics[0] == metrics[1]
    assert len(metrics[0]["hessian"]) > 3 and len(metrics[0]["influence"]) > 3
