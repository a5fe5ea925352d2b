"""``ddprobe plan``: what a study would compute, what is cached (same keys as the study), and an estimate."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

from ddprobe import DistilledSet, Manifest, ProbeResult, hookimpl
from ddprobe.cli import app
from ddprobe.plan import plan_study
from ddprobe.spec import load_spec
from ddprobe.study import run_study

SPEC = """
[study]
name = "plan"
device = "cpu"
cache_dir = "cache"

[data]
dataset = "digits"
train_per_class = 5

[pretrain]
epochs = 1
batch_size = 25

[models]
m = {{ arch = "convnet", width = 4, depth = 1 }}

[distilled.s]
distiller = "first"
ipc = 2

[[probe]]
kind = "uses-pretrained"
tag = {tag}

[report]
formats = ["json"]
"""


class FirstImages:
    name = "first"
    description = "the first ipc training images of each class, after a (planned) model training"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def distill(self, real, ipc, options, ctx):
        index = torch.cat([ix[:ipc] for ix in real.train.class_indices()])
        sub = real.train.subset(index)
        return DistilledSet(sub.images.clone(), sub.labels.clone(), real.classes, manifest=Manifest())

    def plan(self, ctx, ipc, options):
        return [ctx.train_item("m", len(ctx.real.train), what="a model it would train", count=2, key="first:m")]


class UsesPretrained:
    name = "uses-pretrained"
    description = "accuracy of the real-trained model on each set"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        tag: int = 0

    def run(self, ctx, options):
        from ddprobe.training import evaluate

        net = ctx.pretrained("m")
        return ProbeResult({f"{n}/m": evaluate(net, ds) for n, ds in ctx.distilled.items()})

    def plan(self, ctx, options):
        return [ctx.pretrained_item("m"), ctx.forward_item("m", sum(s.get("images", 0) for s in ctx.sets.values()))]


class Plugin:
    __name__ = "plan-test-plugin"

    @hookimpl
    def register_distillers(self, register):
        register(FirstImages())

    @hookimpl
    def register_probes(self, register):
        register(UsesPretrained())


def write(tmp_path, tag=0):
    path = tmp_path / "study.toml"
    path.write_text(SPEC.format(tag=tag))
    return path


def by_name(plan):
    return {e.name: e for e in plan.entries}


def test_plan_before_a_run_lists_work_and_estimates_it(ddprobe_register, tmp_path):
    ddprobe_register(Plugin())
    plan = plan_study(load_spec(write(tmp_path)))
    entries = by_name(plan)
    assert {n: e.status for n, e in entries.items()} == {
        "s": "to compute", "random_ipc2": "to compute", "uses-pretrained": "to compute"}
    item = entries["s"].items[0]
    assert (item.kind, item.model, item.count, item.steps, item.batch) == ("train", "m", 2, 300, 50)
    assert entries["s"].seconds and entries["s"].seconds > 0
    assert "50" in plan.throughput["m"]  # a training step of m at batch 50 was timed here
    assert "runs after the sets above are made" in entries["uses-pretrained"].note
    assert plan.seconds >= entries["s"].seconds and not plan.unknown
    assert not (tmp_path / "cache" / "distilled").exists()  # a dry run stores nothing


def test_plan_lists_cached_items_as_cached(ddprobe_register, tmp_path):
    ddprobe_register(Plugin())
    results = run_study(load_spec(write(tmp_path)), tmp_path / "out")
    assert results.exit_code == 0, results.errors
    plan = plan_study(load_spec(write(tmp_path)), measure=False)
    assert {n: e.status for n, e in by_name(plan).items()} == {
        "s": "cached", "random_ipc2": "cached", "uses-pretrained": "cached"}
    # A probe not run yet is to compute, but the real-trained model it needs is in the cache already.
    plan = plan_study(load_spec(write(tmp_path, tag=1)), measure=False)
    probe = by_name(plan)["uses-pretrained"]
    assert probe.status == "to compute"
    assert [i.cached for i in probe.items] == [True, False]
    result = CliRunner().invoke(app, ["plan", str(write(tmp_path, tag=1)), "--no-measure"])
    assert "[cached]" in result.output  # the real-trained model, shown in the probe's work


def test_plan_command(ddprobe_register, tmp_path):
    ddprobe_register(Plugin())
    result = CliRunner().invoke(app, ["plan", str(write(tmp_path)), "--no-measure"])
    assert result.exit_code == 0, result.output
    assert "to compute" in result.output and "a model it would train" in result.output
    result = CliRunner().invoke(app, ["plan", str(write(tmp_path)), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["study"] == "plan" and data["seconds"] > 0


NO_PLAN = """
from pydantic import BaseModel
from ddprobe import ProbeResult, hookimpl


class NoPlan:
    name = "noplan"
    description = "a probe without the optional plan() method"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        return ProbeResult()


@hookimpl
def register_probes(register):
    register(NoPlan())
"""


def test_probe_without_plan_is_listed_with_unknown_cost(tmp_path):
    (tmp_path / "noplan.py").write_text(NO_PLAN)
    (tmp_path / "s.toml").write_text('[study]\ndevice = "cpu"\ncache_dir = "c"\nplugins = ["noplan.py"]\n'
                                     '[data]\ntrain_per_class = 5\n'
                                     '[distilled.r]\ndistiller = "random"\nipc = 1\n[[probe]]\nkind = "noplan"\n')
    plan = plan_study(load_spec(tmp_path / "s.toml"), measure=False)
    probe = by_name(plan)["noplan"]
    assert probe.status == "to compute" and "no plan()" in probe.note and plan.unknown == ["noplan"]


def test_invalid_spec_exits_2(tmp_path):
    (tmp_path / "bad.toml").write_text("[study]\nnmae = 1\n")
    result = CliRunner().invoke(app, ["plan", str(tmp_path / "bad.toml")])
    assert result.exit_code == 2


def test_items_with_the_same_key_are_counted_once(ddprobe_register, tmp_path):
    ddprobe_register(Plugin())
    text = write(tmp_path).read_text().replace("[[probe]]", '[distilled.t]\ndistiller = "first"\nipc = 3\n\n[[probe]]')
    (tmp_path / "study.toml").write_text(text)
    entries = by_name(plan_study(load_spec(tmp_path / "study.toml")))
    first, second = entries["s"].items[0], entries["t"].items[0]
    assert not first.shared and second.shared and second.seconds == 0.0
    assert entries["s"].seconds > 0 and entries["t"].seconds == 0.0


def test_every_builtin_in_the_default_study_plans_its_work():
    from conftest import REPO

    plan = plan_study(load_spec(REPO / "specs" / "study.toml"))
    kinds = {e.kind for e in plan.entries}
    assert {"dm", "dc", "mtt", "bptt", "evaluate", "recognition", "pixels", "mixing", "sensitivity", "agreement",
            "recognition_curve", "embedding", "hessian", "influence"} <= kinds
    for entry in plan.entries:
        if entry.status == "to compute" and entry.note != "instant":
            assert entry.planned and entry.items, entry.name
    assert plan.unknown == []
    assert 0 < plan.low <= plan.seconds <= plan.high  # an estimate with its range (its size depends on the machine)
    for model, steps in plan.throughput.items():  # a larger batch never looks cheaper than a smaller one
        medians = [steps[b] for b in sorted(steps, key=int)]
        assert medians == sorted(medians), (model, steps)
    influence = next(e for e in plan.entries if e.kind == "influence")
    assert influence.items[0].count == 3 * (10 + 2)  # 3 inits x (10 leave-one-out + full + noise floor)


def test_one_delayed_step_does_not_make_the_estimate(monkeypatch, digits):
    """A step another job delayed (the first timed one here) moves neither the median nor the fastest step."""
    from ddprobe import registry, timing
    from ddprobe.context import ModelSpec
    from ddprobe.plan import PlanItem, Throughput

    calls = []

    def fake_timed(fn, device):
        calls.append(1)
        return 0.662 if len(calls) == 1 else 0.0004 + 0.0001 * (len(calls) % 2)

    monkeypatch.setattr(timing, "timed", fake_timed)
    plugin = registry.get_model("mlp")
    models = {"mlp": ModelSpec("mlp", "mlp", plugin.Options(hidden=8), plugin)}
    throughput = Throughput(models, digits.input_shape, digits.num_classes, "cpu")
    low, mid, high = throughput.step_range("mlp", 30)
    assert len(calls) >= 5  # several repeats, not one
    assert low == pytest.approx(0.0004) and mid <= 0.0005 and high <= 0.0005
    low, mid, high = throughput.estimate_range(PlanItem("x", "train", "mlp", steps=100, batch=30, count=2))
    assert mid == pytest.approx(200 * throughput.measured["mlp"]["30"]) and low <= mid <= high
    hvp = throughput.estimate_range(PlanItem("x", "hvp", "mlp", steps=10, batch=30))
    assert hvp[1] == pytest.approx(20 * mid / 200)  # a Hessian-vector product costs two training steps


def test_human_range():
    from ddprobe.plan import human_range

    assert human_range(33.0, 25.0, 50.0) == "33 s (25 s - 50 s)"
    assert human_range(600.0, 400.0, 1300.0) == "10 min (7 min - 22 min)"
    assert human_range(0.2, 0.1, 0.3) == "<1 s"
    assert human_range(None, None, None) == "?"
