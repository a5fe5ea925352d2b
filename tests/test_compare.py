"""``ddprobe compare OLD NEW``: the change of every metric, and exit 1 when one regresses beyond the tolerance."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.cli.compare import compare, direction


def report(metrics: dict[str, dict[str, float | None]], sha: str = "s") -> dict:
    return {"study": {"name": "t", "spec_sha256": sha},
            "probes": [{"id": pid, "kind": pid, "status": "ok", "metrics": m} for pid, m in metrics.items()]}


OLD = {"evaluate": {"dm/convnet": 0.80, "random_ipc1/convnet": 0.50}, "train": {"dm/loss": 1.0}}


def run(tmp_path, old, new, *args):
    (tmp_path / "old.json").write_text(json.dumps(report(old) if "probes" not in old else old))
    (tmp_path / "new.json").write_text(json.dumps(report(new) if "probes" not in new else new))
    return CliRunner().invoke(app, ["compare", str(tmp_path / "old.json"), str(tmp_path / "new.json"), *args])


def with_value(probe, metric, value):
    new = json.loads(json.dumps(OLD))
    new[probe][metric] = value
    return new


def test_identical_reports_exit_0_and_show_every_metric(tmp_path):
    result = run(tmp_path, OLD, OLD)
    assert result.exit_code == 0, result.output
    for metric in ("dm/convnet", "random_ipc1/convnet", "dm/loss"):
        assert metric in result.output
    assert "no regression" in result.output


@pytest.mark.parametrize(("tolerance", "code"), [("0.1", 0), ("0.05", 0), ("0.01", 1), ("0", 1)])
def test_a_drop_regresses_only_beyond_the_tolerance(tmp_path, tolerance, code):
    result = run(tmp_path, OLD, with_value("evaluate", "dm/convnet", 0.75), "--tolerance", tolerance)
    assert result.exit_code == code, result.output
    assert ("regressed" in result.output) == (code == 1)


def test_relative_tolerance(tmp_path):
    new = with_value("evaluate", "dm/convnet", 0.75)  # -6.25% of 0.8
    assert run(tmp_path, OLD, new, "-t", "0.1", "--relative").exit_code == 0
    assert run(tmp_path, OLD, new, "-t", "0.05", "--relative").exit_code == 1


def test_improvements_never_fail(tmp_path):
    new = with_value("evaluate", "dm/convnet", 0.95)
    new["train"]["dm/loss"] = 0.5
    result = run(tmp_path, OLD, new)
    assert result.exit_code == 0 and "better" in result.output


def test_lower_is_better_by_default_for_losses(tmp_path):
    assert direction("train", "dm/loss") == "lower"
    assert direction("evaluate", "dm/convnet", declared={"*": "higher"}) == "higher"
    assert direction("x", "dm/test_accuracy") == "higher"
    assert run(tmp_path, OLD, with_value("train", "dm/loss", 1.2)).exit_code == 1


def test_direction_globs_override_the_default(tmp_path):
    new = with_value("evaluate", "random_ipc1/convnet", 0.3)
    assert run(tmp_path, OLD, new).exit_code == 1
    assert run(tmp_path, OLD, new, "--lower", "random_ipc*").exit_code == 0
    assert run(tmp_path, OLD, new, "--ignore", "evaluate:random_*").exit_code == 0
    assert run(tmp_path, OLD, with_value("train", "dm/loss", 1.2), "--higher", "*/loss").exit_code == 0


def test_missing_and_nan_metrics_regress(tmp_path):
    missing = json.loads(json.dumps(OLD))
    del missing["evaluate"]["dm/convnet"]
    result = run(tmp_path, OLD, missing)
    assert result.exit_code == 1 and "missing" in result.output
    assert run(tmp_path, OLD, missing, "--allow-missing").exit_code == 0
    assert run(tmp_path, OLD, with_value("evaluate", "dm/convnet", None)).exit_code == 1


def test_new_metrics_are_shown_not_judged(tmp_path):
    new = json.loads(json.dumps(OLD))
    new["evaluate"]["kcenter/convnet"] = 0.1
    result = run(tmp_path, OLD, new)
    assert result.exit_code == 0 and "kcenter/convnet" in result.output and "new" in result.output


def test_json_output(tmp_path):
    result = run(tmp_path, OLD, with_value("evaluate", "dm/convnet", 0.7), "--json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["regressions"] == 1
    row = next(c for c in data["changes"] if c["metric"] == "dm/convnet")
    assert row["status"] == "regressed" and row["delta"] == pytest.approx(-0.1)


def test_unreadable_input_exits_2(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "old.json"), str(tmp_path / "missing.json")])
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "old.json"), str(tmp_path / "old.json")])
    assert result.exit_code == 2 and "not a report.json" in result.output


def test_timings_are_never_judged(tmp_path):
    old = {"evaluate": {"dm/convnet": 0.8},
           "influence": {"dm/audit/cg/seconds": 1.0, "load_seconds": 2.0, "dm/seconds_per_retrain": 0.5}}
    new = {"evaluate": {"dm/convnet": 0.8},
           "influence": {"dm/audit/cg/seconds": 9.0, "load_seconds": 0.1, "dm/seconds_per_retrain": 3.0}}
    a, b = report(old), report(new)
    a["timings"] = {"probes": {"evaluate": 1.0}}  # report.json's separate timings section: not read
    b["timings"] = {"probes": {"evaluate": 50.0}}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"),
                                      "--higher", "*"])
    assert result.exit_code == 0, result.output
    assert "regress" not in result.output.replace("no regression", "")
    assert {c.direction for c in compare(a, b) if "seconds" in c.metric} == {"timing"}


def test_metrics_without_a_direction_are_shown_not_judged(tmp_path):
    old = {"agreement": {"dm/mlp/early_step": 38.0, "dm/mlp/accuracy": 0.8}}
    new = {"agreement": {"dm/mlp/early_step": 12.0, "dm/mlp/accuracy": 0.8}}
    changes = {c.metric: c for c in compare(report(old), report(new))}
    assert changes["dm/mlp/early_step"].direction == "none"
    assert changes["dm/mlp/early_step"].status == "changed" and not changes["dm/mlp/early_step"].regression
    assert changes["dm/mlp/accuracy"].direction == "higher"  # declared by the agreement probe
    result = run(tmp_path, old, new)
    assert result.exit_code == 0 and "changed" in result.output and "-26" in result.output


def test_directions_recorded_in_the_report_win(tmp_path):
    old, new = report({"mine": {"a/score": 1.0}}), report({"mine": {"a/score": 2.0}})
    for r in (old, new):
        r["probes"][0]["directions"] = {"*/score": "lower"}
    (c,) = compare(old, new)
    assert (c.direction, c.status, c.regression) == ("lower", "regressed", True)


def test_run_folders_and_long_names_at_80_columns(tmp_path):
    long = "a_rather_long_distilled_set_name_from_a_sweep/convnet_width128/test_accuracy"
    for name, value in (("old", 0.8), ("new", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps(report({"evaluate": {long: value}})))
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "old"), str(tmp_path / "new")],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 1, result.output
    assert f"evaluate:{long}" in result.output
    assert "1 regression " in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = CliRunner().invoke(app, ["compare", str(empty), str(tmp_path / "new")])
    assert bad.exit_code == 2 and "without a report.json" in bad.output


def test_two_runs_of_a_study_compare_clean(tmp_path):
    from ddprobe.spec import load_spec
    from ddprobe.study import run_study

    (tmp_path / "s.toml").write_text('[study]\nname = "c"\ndevice = "cpu"\ncache_dir = "cache"\n'
                                     '[data]\ntrain_per_class = 5\n[distilled.r]\ndistiller = "random"\nipc = 1\n'
                                     '[[probe]]\nkind = "pixels"\n[report]\nformats = ["json"]\n')
    run_study(load_spec(tmp_path / "s.toml"), tmp_path / "a")
    run_study(load_spec(tmp_path / "s.toml"), tmp_path / "b", no_cache=True)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "a" / "report.json"),
                                      str(tmp_path / "b" / "report.json")])
    assert result.exit_code == 0, result.output
    assert "r/outside_01" in result.output


def test_compare_function_order_and_statuses():
    changes = compare(report(OLD), report(with_value("evaluate", "dm/convnet", 0.79)), tolerance=0.02)
    assert [(c.metric, c.status) for c in changes] == [
        ("dm/convnet", "worse"), ("random_ipc1/convnet", "same"), ("dm/loss", "same")]


def test_ci_gate_spec_is_valid_and_planned():
    from pathlib import Path

    from ddprobe.plan import plan_study
    from ddprobe.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "specs" / "ci-gate.toml")
    assert [p.id for p in spec.probes] == ["evaluate", "recognition", "pixels"]
    assert all(p.expect for p in spec.probes) and spec.study.device == "cpu"
    assert {e.name for e in plan_study(spec, measure=False).entries} == {"real10", "evaluate", "recognition",
                                                                          "pixels"}


@pytest.mark.slow
def test_ci_gate_passes_and_compares_clean_with_itself(tmp_path):
    from pathlib import Path

    spec = Path(__file__).resolve().parents[1] / "specs" / "ci-gate.toml"
    result = CliRunner().invoke(app, ["run", str(spec), "--quiet", "--output", str(tmp_path / "gate")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "gate" / "junit.xml").read_text().count("<testcase") == 4
    report = str(tmp_path / "gate" / "report.json")
    assert CliRunner().invoke(app, ["compare", report, report]).exit_code == 0
