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
    assert direction("evaluate", "dm/convnet") == "higher"
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
