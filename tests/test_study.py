"""The study runner end to end on digits: isolation of failures, expectations, caching, resume, reports."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ddprobe.spec import load_spec
from ddprobe.study import run_study

SPEC = """
[study]
name = "tiny"
seed = 3
plugins = ["probes_for_tests.py"]

[train]
steps = 15

[pretrain]
epochs = 4
batch_size = 128
lr = 0.05

[models]
convnet = {{ arch = "convnet", width = 8, depth = 1 }}

[distilled.file]
path = "set.pt"

[[probe]]
kind = "evaluate"
seeds = 1

[[probe]]
kind = "recognition"
expect = {{ "real_test/convnet" = ">= 0.3", "file/convnet" = "{file_expect}" }}

{extra}

[[probe]]
kind = "pixels"
"""

PLUGIN = '''
from pydantic import BaseModel
from ddprobe import hookimpl, ProbeResult


class Boom:
    name = "boom"
    description = "always raises"

    class Options(BaseModel):
        message: str = "kaboom"

    def run(self, ctx, options):
        raise RuntimeError(options.message)


class Interrupt:
    name = "interrupt"
    description = "simulates the user pressing Ctrl-C"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        import os
        import signal
        import time

        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        time.sleep(5)
        raise AssertionError("no KeyboardInterrupt after SIGINT")


class Count:
    name = "count"
    description = "counts distilled sets"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        return ProbeResult(metrics={"sets": float(len(ctx.distilled))}, summary="counted")


@hookimpl
def register_probes(register):
    register(Boom())
    register(Interrupt())
    register(Count())
'''


def make_spec(tmp_path: Path, extra: str = "", file_expect: str = ">= 0.0") -> Path:
    (tmp_path / "probes_for_tests.py").write_text(PLUGIN)
    g = torch.Generator().manual_seed(0)
    torch.save({"data": torch.randn(20, 1, 8, 8, generator=g), "label": torch.arange(10).repeat_interleave(2)},
               tmp_path / "set.pt")
    path = tmp_path / "study.toml"
    path.write_text(SPEC.format(extra=extra, file_expect=file_expect))
    return path


def run(path: Path, **kw):
    return run_study(load_spec(path), path.parent / "out", **kw)


def test_study_runs_and_writes_every_report(tmp_path):
    import jsonschema

    results = run(make_spec(tmp_path))
    assert results.exit_code == 0, results.errors
    out = tmp_path / "out"
    for name in ("report.json", "report.md", "report.html", "junit.xml"):
        assert (out / name).stat().st_size > 0
    assert sorted(p.name for p in (out / "figures").glob("*.png")) == [
        "distilled-file.png", "distilled-random_ipc2.png", "pixels-density.png", "recognition-recognition.png"]
    assert (out / "tables" / "evaluate-accuracy.csv").exists()
    report = json.loads((out / "report.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "ddprobe/report/report.schema.json").read_text())
    jsonschema.validate(report, schema)
    # the imported set gets a random-real control at the same images per class
    assert report["distilled"]["random_ipc2"]["control"] is True
    assert report["distilled"]["file"]["images"] == 20
    evaluate = report["probes"][0]
    assert set(evaluate["metrics"]) == {"file/convnet", "random_ipc2/convnet"}
    assert all(0.0 <= v <= 1.0 for v in evaluate["metrics"].values())
    checks = report["probes"][1]["checks"]
    assert [c["passed"] for c in checks] == [True, True]
    assert "data:image/png;base64," in (out / "report.html").read_text()


def test_failing_probe_is_isolated_exit_3(tmp_path):
    results = run(make_spec(tmp_path, extra='[[probe]]\nkind = "boom"\nmessage = "it broke"'))
    assert results.exit_code == 3
    status = {p.id: p.status for p in results.probes}
    assert status == {"evaluate": "ok", "recognition": "ok", "boom": "error", "pixels": "ok"}
    boom = next(p for p in results.probes if p.id == "boom")
    assert boom.error == "RuntimeError: it broke"
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["exit_code"] == 3
    assert report["probes"][3]["metrics"]  # pixels after the failure still reported
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert 'errors="1"' in junit and "it broke" in junit


def test_failed_expectation_exit_1_and_junit_failure(tmp_path):
    results = run(make_spec(tmp_path, file_expect="> 1.5"))
    assert results.exit_code == 1
    junit = (tmp_path / "out" / "junit.xml").read_text()
    assert 'failures="1"' in junit and "file/convnet" in junit


def test_expectation_on_missing_metric_fails_with_hint(tmp_path):
    path = make_spec(tmp_path, extra='[[probe]]\nkind = "count"\nexpect = { "set" = "== 2" }')
    results = run(path)
    check = next(p for p in results.probes if p.id == "count").checks[0]
    assert not check.passed and "did you mean 'sets'" in check.message
    assert results.exit_code == 1


def test_rerun_is_served_from_cache_and_trains_nothing(tmp_path):
    path = make_spec(tmp_path)
    first = run(path)
    assert first.provenance["cache"]["models"]["misses"] > 0
    second = run(path)
    cache = second.provenance["cache"]
    assert "models" not in cache  # no model was even looked up: every probe result came from the cache
    assert cache["probe-results"] == {"hits": 3, "misses": 0}
    assert all(p.cached for p in second.probes)
    assert [p.result.metrics for p in first.probes] == [p.result.metrics for p in second.probes]
    assert (tmp_path / "out" / "figures" / "recognition-recognition.png").exists()


def test_new_probe_reuses_trained_models(tmp_path):
    path = make_spec(tmp_path)
    run(path, only=["recognition"])
    results = run(path)
    cache = results.provenance["cache"]
    assert cache["probe-results"] == {"hits": 1, "misses": 2}
    # evaluate trains two new models; recognition's real-trained model is not retrained
    assert cache["models"] == {"hits": 0, "misses": 2}


def test_interrupted_study_resumes(tmp_path):
    import jsonschema

    path = make_spec(tmp_path, extra='[[probe]]\nkind = "interrupt"')
    stopped = run(path)  # Ctrl-C in the third probe: a partial report of the two that finished, pixels never ran
    assert stopped.interrupted and stopped.exit_code == 130
    assert [(p.id, p.status) for p in stopped.probes] == [
        ("evaluate", "ok"), ("recognition", "ok"), ("interrupt", "interrupted")]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    schema = json.loads((Path(__file__).parents[1] / "ddprobe/report/report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert report["interrupted"] and report["probes"][2]["status"] == "interrupted"
    path.write_text(path.read_text().replace('[[probe]]\nkind = "interrupt"', ""))
    results = run(path)
    cached = {p.id: p.cached for p in results.probes}
    assert cached == {"evaluate": True, "recognition": True, "pixels": False}


def test_no_cache_recomputes_with_identical_numbers(tmp_path):
    path = make_spec(tmp_path)
    first = run(path)
    again = run(path, no_cache=True)
    assert again.provenance["cache"]["models"]["hits"] == 0
    assert [p.result.metrics for p in first.probes] == [p.result.metrics for p in again.probes]


def test_seed_changes_results(tmp_path):
    path = make_spec(tmp_path)
    first = run(path)
    path.write_text(path.read_text().replace("seed = 3", "seed = 4"))
    other = run(path)
    assert first.probes[0].result.metrics != other.probes[0].result.metrics


def test_mismatched_import_is_a_distiller_error_not_a_crash(tmp_path):
    path = make_spec(tmp_path)
    torch.save({"data": torch.randn(20, 3, 32, 32), "label": torch.arange(10).repeat_interleave(2)},
               tmp_path / "set.pt")
    results = run(path)
    assert results.exit_code == 3
    assert results.distilled["file"].status == "error"
    assert "image shape [3, 32, 32] but digits images are [1, 8, 8]" in results.distilled["file"].error
    assert all(p.status == "ok" for p in results.probes)  # probes still ran on what was there


def test_lifecycle_hooks_fire_in_order(tmp_path):
    from ddprobe import hookimpl
    from ddprobe.plugins import load_plugins

    calls = []

    class Tracker:
        @hookimpl
        def study_started(self, study):
            calls.append(("started", sorted(study.context.distilled)))

        @hookimpl
        def probe_finished(self, study, probe, result):
            calls.append(("probe", probe.id, result.status))

        @hookimpl
        def study_finished(self, study, results):
            calls.append(("finished", results.exit_code))

    pm = load_plugins()
    pm.register(Tracker(), name="tracker")
    try:
        run(make_spec(tmp_path))
    finally:
        pm.unregister(name="tracker")
    assert calls == [("started", ["file", "random_ipc2"]), ("probe", "evaluate", "ok"),
                     ("probe", "recognition", "ok"), ("probe", "pixels", "ok"), ("finished", 0)]
