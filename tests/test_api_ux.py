"""The Python API a notebook user reaches for, the shared number format and spec overrides."""

from __future__ import annotations

import io

import pytest

from ddprobe.errors import SpecError
from ddprobe.overrides import apply_overrides, parse_value
from ddprobe.report.numbers import fmt, fmt_delta, fmt_mean, fmt_seconds, plural

TEXT = """
[study]
name = "api"
device = "cpu"
[data]
train_per_class = 5
[distilled.r]
distiller = "random"
ipc = 1
[[probe]]
kind = "pixels"
[report]
formats = ["json", "html"]
"""


@pytest.mark.parametrize(("value", "shown"), [
    (0.725, "0.725"), (0.8556, "0.856"), (1.0, "1"), (38.0, "38"), (6.926e-07, "6.93e-07"), (5234.7, "5235"),
    (12.34, "12.3"), (0.0, "0"), (-0.25, "-0.25"), (7, "7"), (float("nan"), "nan"), (None, ""), ("x", "x"),
])
def test_one_number_format(value, shown):
    assert fmt(value) == shown


def test_means_deltas_durations_plurals():
    assert fmt_mean(0.725, 0.0, 1) == "0.725 (n=1)"
    assert fmt_mean(0.725, 0.0123, 3) == "0.725 ± 0.0123 (n=3)"
    assert (fmt_delta(0.02), fmt_delta(-3.0), fmt_delta(0.0)) == ("+0.02", "-3", "0")
    assert (fmt_seconds(1.72), fmt_seconds(42), fmt_seconds(185), fmt_seconds(3720)) == (
        "1.7 s", "42 s", "3 min 5 s", "1 h 02 min")
    assert (plural(1, "model"), plural(2, "model"), plural(0, "probe")) == ("1 model", "2 models", "0 probes")


def test_override_values_are_typed_by_toml():
    assert parse_value("0.1") == 0.1 and parse_value("3") == 3 and parse_value("true") is True
    assert parse_value("cpu") == "cpu" and parse_value('"adam"') == "adam" and parse_value("[1, 2]") == [1, 2]
    raw = {"train": {"lr": 0.01}, "probe": [{"kind": "pixels"}, {"kind": "evaluate", "id": "ev"}]}
    out = apply_overrides(raw, ["train.lr=0.1", "study.seed=3", "probe.ev.seeds=5", "probe.0.bins=9"])
    assert out["train"]["lr"] == 0.1 and out["study"]["seed"] == 3
    assert out["probe"][1]["seeds"] == 5 and out["probe"][0]["bins"] == 9
    assert raw["train"]["lr"] == 0.01  # the original is not changed
    with pytest.raises(SpecError, match="out of range"):
        apply_overrides(raw, ["probe.5.bins=1"])
    with pytest.raises(SpecError, match="not a table"):
        apply_overrides(raw, ["train.lr.x=1"])


def test_load_spec_from_path_dict_text_with_overrides(tmp_path):
    import tomllib

    from ddprobe import load_spec

    path = tmp_path / "s.toml"
    path.write_text(TEXT)
    from_path, from_text, from_dict = load_spec(path), load_spec(TEXT), load_spec(tomllib.loads(TEXT))
    assert from_path.study.name == from_text.study.name == from_dict.study.name == "api"
    assert from_path.path == path and from_text.path is None
    changed = load_spec(path, overrides=["study.seed=4"])
    assert changed.study.seed == 4 and changed.sha256 != from_path.sha256
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec("[study\nname = 1")


def test_run_study_results_by_probe_id_and_progress(tmp_path):
    from rich.console import Console

    from ddprobe import DistilledSet, load_spec, run_study

    buf = io.StringIO()
    results = run_study(load_spec(TEXT), tmp_path / "run", console=Console(file=buf, width=100), progress=True)
    assert "probe 1 of 1: pixels" in buf.getvalue()
    assert results.status == "passed" and "pixels" in results
    assert results["pixels"] is results.probe("pixels")
    assert results["pixels"].metrics["r/outside_01"] == 0.0
    with pytest.raises(KeyError, match="probes: pixels"):
        results["evaluate"]
    # a saved set comes back through the public DistilledSet.load
    from ddprobe.spec import load_spec as load
    from ddprobe.study import prepare

    study = prepare(load(TEXT), tmp_path / "p")
    ds = study.context.distilled["r"]
    saved = ds.save(tmp_path / "sets" / "r")
    back = DistilledSet.load(saved)
    assert back.manifest.sha256 == ds.manifest.sha256 and back.classes == ds.classes
    assert DistilledSet.load(tmp_path / "sets" / "r").manifest.sha256 == ds.manifest.sha256


def test_set_tables_keep_cost_counters_out():
    from ddprobe.report.tables import metric_matrices

    metrics = {"real/trace_final": 2.0, "dm/trace_final": 1.0, "real/peak_step": 3.0, "dm/peak_step": 4.0,
               "products/total": 50.0, "products/max_per_checkpoint": 5.0}
    (matrix,), rest = metric_matrices(metrics, ["dm"])
    assert matrix.rows == ["real", "dm"] and matrix.cols == ["trace_final", "peak_step"]
    assert rest == {"products/total": 50.0, "products/max_per_checkpoint": 5.0}
