"""The findings built-in probes declare, on cases whose answer is known, and gating a run on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.training import TrainRecipe

SMALL = {"mlp": ("mlp", {"hidden": 32})}


def _by_set(result):
    return {f.set: f for f in result.findings}


def test_pixels_finding_real_images_stay_in_range_and_scaled_images_leave_it(make_ctx, random_set, digits):
    from ddprobe import registry

    control = random_set(2)
    bright = random_set(2, seed=1)
    bright.images = digits.from_pixels(digits.to_pixels(bright.images) * 1.6 - 0.3)
    ctx = make_ctx(sets={"random_ipc2": control, "bright": bright}, models=SMALL)
    ctx.controls = {"random_ipc2"}
    probe = registry.get_probe("pixels")
    found = _by_set(probe.run(ctx, probe.Options()))
    assert found["random_ipc2"].verdict == "does not hold" and found["random_ipc2"].effect == 0
    assert found["random_ipc2"].control and found["random_ipc2"].n == 20
    assert found["bright"].verdict == "holds" and found["bright"].ci[0] > 0
    outside = ((digits.to_pixels(bright.images) < 0) | (digits.to_pixels(bright.images) > 1)).float().mean()
    assert found["bright"].effect == pytest.approx(float(outside), abs=1e-6)


def test_mixing_finding_adding_real_images_helps_the_random_control(make_ctx, random_set):
    from ddprobe import registry

    ctx = make_ctx(sets={"random_ipc1": random_set(1)}, models=SMALL, recipe=TrainRecipe(steps=60))
    ctx.controls = {"random_ipc1"}
    probe = registry.get_probe("mixing")
    res = probe.run(ctx, probe.Options(k=[0, 40], seeds=3, recipe={"steps": 300, "lr": 0.05}))
    f = _by_set(res)["random_ipc1"]
    # the control against no change: 40 real images per class lift a 10-image random set far above itself
    assert f.effect > 0.1 and f.n == 3 and f.verdict == "does not hold"
    runs = res.tables["runs"]
    gains = [float(runs[(runs.seed == s) & (runs.k == 40)].accuracy.iloc[0] -
                   runs[(runs.seed == s) & (runs.k == 0)].accuracy.iloc[0]) for s in range(3)]
    assert f.effect == pytest.approx(np.mean(gains))


def test_mixing_finding_is_paired_with_the_control_and_one_seed_is_inconclusive(make_ctx, random_set):
    from ddprobe import registry

    ctx = make_ctx(sets={"random_ipc1": random_set(1), "other": random_set(1, seed=3)}, models=SMALL)
    ctx.controls = {"random_ipc1"}
    probe = registry.get_probe("mixing")
    res = probe.run(ctx, probe.Options(k=[0, 5], seeds=1, recipe={"steps": 20}))
    f = _by_set(res)["other"]
    assert f.verdict == "inconclusive" and f.n == 1 and "only 1" in f.reason
    assert "random_ipc1" in f.statistic
    t = res.tables["runs"]
    change = {s: float(t[(t.set == s) & (t.k == 5)].accuracy.iloc[0] - t[(t.set == s) & (t.k == 0)].accuracy.iloc[0])
              for s in ("other", "random_ipc1")}
    assert f.effect == pytest.approx(change["other"] - change["random_ipc1"])


def test_recognition_finding_over_seeds_and_a_users_own_weights(make_ctx, random_set, tmp_path, digits):
    from ddprobe import registry
    from ddprobe.context import ModelSpec

    probe = registry.get_probe("recognition")
    ctx = make_ctx(sets={"r": random_set(2)}, models=SMALL,
                   pretrain=TrainRecipe(epochs=1, batch_size=128, steps=None))
    res = probe.run(ctx, probe.Options(seeds=3))
    f = _by_set(res)["r"]
    runs = res.tables["runs"]
    assert f.n == 3 and len(runs) == 3
    assert f.effect == pytest.approx(float((runs.recognition - runs.real_test_accuracy).mean()))
    # a user's own real-trained model: its state dict is loaded, not trained, and counts once
    net = ctx.pretrained("mlp", "pretrained:2")
    weights = tmp_path / "mine.pt"
    torch.save(net.state_dict(), weights)
    plugin = registry.get_model("mlp")
    ctx.models["mine"] = ModelSpec("mine", "mlp", plugin.Options(hidden=32), plugin, weights)
    own = probe.run(ctx, probe.Options(models=["mine"], seeds=3))
    assert own.tables["runs"].recognition.tolist() == [runs[runs.seed == 2].recognition.iloc[0]]
    assert _by_set(own)["r"].verdict == "inconclusive" and "only 1" in _by_set(own)["r"].reason
    # the probe's own recipe trains its own real-trained models (not the shared ctx.pretrained ones)
    longer = probe.run(ctx, probe.Options(seeds=1, recipe={"epochs": 3})).tables["runs"]
    assert longer.real_test_accuracy.iloc[0] != runs.real_test_accuracy.iloc[0]


def test_recognition_curve_rise_and_a_window_too_short(make_ctx, random_set):
    from ddprobe import registry
    from ddprobe.builtin.probe_recognition_curve import rise_step, still_rising

    t = np.arange(200)
    fast, slow = 1 - np.exp(-t / 5), 1 - np.exp(-t / 40)
    assert rise_step(fast) < rise_step(slow)
    assert still_rising(fast) is None and still_rising(t / 200) == pytest.approx(0.2, abs=0.01)
    probe = registry.get_probe("recognition_curve")
    ctx = make_ctx(sets={"r": random_set(1)}, models=SMALL,
                   pretrain=TrainRecipe(epochs=1, batch_size=64, steps=None, lr=0.01))
    res = probe.run(ctx, probe.Options(steps=6, seeds=2))
    f = _by_set(res)["r"]
    assert f.verdict == "inconclusive" and "too short" in f.reason and f.n == 2


def test_sensitivity_names_diverged_cells_and_their_spread(make_ctx, random_set):
    from ddprobe import registry

    probe = registry.get_probe("sensitivity")
    ctx = make_ctx(sets={"r": random_set(2)}, models=SMALL, recipe=TrainRecipe(steps=20))
    ctx.controls = {"r"}
    res = probe.run(ctx, probe.Options(presets=[], grid={"lr": [1e4]}, seeds=1))
    t = res.tables["sensitivity"]
    assert t[t.cell == "lr=10000.0"].diverged.iloc[0] == 1 and t[t.cell == "study"].diverged.iloc[0] == 0
    assert res.metrics["r/diverged_cells"] == 1
    assert np.isnan(res.metrics["r/spread_converged"]) or res.metrics["r/spread_converged"] == 0
    assert "diverged" in res.summary and "lr=10000.0" in res.summary


SPEC = """
[study]
name = "gate"
[train]
steps = 10
[models]
mlp = { arch = "mlp", hidden = 16 }
[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 3
[[probe]]
kind = "pixels"
expect = { %s }
"""


def _run(tmp_path: Path, expect: str, command: str = "run"):
    path = tmp_path / "s.toml"
    path.write_text(SPEC % expect)
    args = [command, str(path)] + (["--output", str(tmp_path / "out")] if command == "run" else [])
    return CliRunner().invoke(app, args)


def test_a_findings_expectation_gates_the_run(tmp_path):
    import json

    held = _run(tmp_path, '"finding:pixels/random_ipc1" = "does not hold"')
    assert held.exit_code == 0, held.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    control = next(f for f in report["findings"] if f["set"] == "random_ipc1")
    assert control["verdict"] == "does not hold" and control["control"] is True
    dm = next(f for f in report["findings"] if f["set"] == "dm")
    assert dm["control_set"] == "random_ipc1" and dm["control_verdict"] == "does not hold"
    assert "Findings" in held.output
    failed = _run(tmp_path, '"finding:pixels/random_ipc1" = "holds"')
    assert failed.exit_code == 1


def test_findings_expectations_naming_what_cannot_exist_fail_validation(tmp_path):
    bad_id = _run(tmp_path, '"finding:pixel/dm" = "holds"', "validate")
    assert bad_id.exit_code == 2 and "no finding 'pixel'" in bad_id.output and "pixels" in bad_id.output
    bad_set = _run(tmp_path, '"finding:pixels/dn" = "holds"', "validate")
    assert bad_set.exit_code == 2 and "no set 'dn'" in bad_set.output
    no_control = _run(tmp_path, '"finding:pixels/random_ipc5" = "holds"', "validate")  # the study adds random_ipc1
    assert no_control.exit_code == 2 and "no set 'random_ipc5'" in no_control.output
    bad_verdict = _run(tmp_path, '"finding:pixels/dm" = "yes"', "validate")
    assert bad_verdict.exit_code == 2 and "verdict" in bad_verdict.output


def test_findings_in_report_json_validate_against_the_schema(tmp_path):
    import json

    import jsonschema

    from ddprobe.report.json_report import __file__ as here

    _run(tmp_path, '"finding:pixels/dm" = "!= inconclusive"')
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    schema = json.loads((Path(here).parent / "report.schema.json").read_text())
    jsonschema.validate(report, schema)
    assert {f["set"] for f in report["findings"]} == {"dm", "random_ipc1"}
    assert all(set(f) >= {"id", "probe", "set", "claim", "statistic", "effect", "ci", "n", "unit_of_n", "verdict",
                          "reason"} for f in report["findings"])
