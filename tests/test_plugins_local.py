"""One-off plugin files: ``[study] plugins = ["./my_probe.py"]`` loads a plugin relative to the spec."""

from __future__ import annotations

import pytest

from ddprobe.errors import SpecError
from ddprobe.plugins import get_plugins
from ddprobe.spec import load_spec
from ddprobe.study import run_study

PLUGIN = '''
# -- start one-off --
from pydantic import BaseModel, ConfigDict

from ddprobe import ProbeResult, hookimpl


class MeanPixel:
    name = "mean-pixel"
    description = "mean input value of each distilled set"

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def run(self, ctx, options):
        return ProbeResult({f"{n}/mean": float(ds.images.mean()) for n, ds in ctx.distilled.items()})


@hookimpl
def register_probes(register):
    register(MeanPixel())
# -- end one-off --
'''

SPEC = """
[study]
name = "local"
device = "cpu"
control = false
cache_dir = "cache"
plugins = ["{plugin}"]

[data]
dataset = "digits"
train_per_class = 5

[distilled.r]
distiller = "random"
ipc = 1

[[probe]]
kind = "mean-pixel"

[report]
formats = ["json"]
"""


def test_plugin_file_relative_to_the_spec_is_loaded_and_used(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_probe.py").write_text(PLUGIN)
    spec_dir = tmp_path / "specs"
    spec_dir.mkdir()
    (spec_dir / "study.toml").write_text(SPEC.format(plugin="../plugins/my_probe.py"))
    results = run_study(load_spec(spec_dir / "study.toml"), tmp_path / "out")
    assert results.exit_code == 0
    assert set(results.probes[0].result.metrics) == {"r/mean"}
    names = {p["name"]: p["hooks"] for p in get_plugins()}
    assert names[f"file:{(tmp_path / 'plugins' / 'my_probe.py').resolve()}"] == ["register_probes"]


def test_missing_plugin_file_is_a_spec_error_naming_the_key(tmp_path):
    (tmp_path / "study.toml").write_text(SPEC.format(plugin="./nope.py"))
    with pytest.raises(SpecError, match=r"study\.plugins\[0\]: plugin file .*nope\.py does not exist"):
        load_spec(tmp_path / "study.toml")


def test_broken_plugin_file_is_a_spec_error_with_its_cause(tmp_path):
    (tmp_path / "broken.py").write_text("import no_such_module_ddprobe\n")
    (tmp_path / "study.toml").write_text(SPEC.format(plugin="./broken.py"))
    with pytest.raises(SpecError, match=r"study\.plugins\[0\]: plugin file ./broken.py failed to load: "
                                        r"ModuleNotFoundError"):
        load_spec(tmp_path / "study.toml")


FINDING_PLUGIN = '''
# -- start finding --
from pydantic import BaseModel, ConfigDict, Field

from ddprobe import ProbeResult, hookimpl
from ddprobe.findings import FindingSpec

BRIGHTER = FindingSpec(
    id="brighter",
    claim="distilled images are brighter than real training images",
    statistic="an image's mean pixel value minus the real training images' mean; bootstrap over images",
    unit_of_n="images",
    threshold=0.0,
    direction="greater",
)


class Brightness:
    name = "brightness"
    description = "are distilled images brighter than real ones?"
    findings = (BRIGHTER,)  # what `expect = { "finding:brighter/<set>" = "holds" }` can name

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        margin: float = Field(0.0, description="added to the real mean before comparing")

    def run(self, ctx, options):
        from ddprobe.findings import bootstrap_ci

        real = float(ctx.real.to_pixels(ctx.real.train.images).mean()) + options.margin
        metrics, findings = {}, []
        for name, ds in ctx.distilled.items():
            per_image = ctx.real.to_pixels(ds.images).flatten(1).mean(1) - real
            metrics[f"{name}/brightness"] = float(per_image.mean())
            effect, ci, n = bootstrap_ci(per_image.tolist(), seed=ctx.seed_for(f"brightness:{name}"))
            findings.append(BRIGHTER.judge(name, ctx.probe_id, effect, ci, n, control=name in ctx.controls))
        return ProbeResult(metrics, findings=findings)


@hookimpl
def register_probes(register):
    register(Brightness())
# -- end finding --
'''


def test_a_plugin_probe_declares_a_finding_that_a_spec_gates_on(tmp_path):
    import json

    from typer.testing import CliRunner

    from ddprobe import registry
    from ddprobe.cli import app
    from ddprobe.testing import check_probe

    (tmp_path / "brightness.py").write_text(FINDING_PLUGIN)
    spec = SPEC.format(plugin="brightness.py").replace('kind = "mean-pixel"', '''kind = "brightness"
expect = { "finding:brighter/r" = "does not hold", "r/brightness" = "<= r/brightness + 0.0" }''')
    spec = spec.replace("control = false", "control = true")
    (tmp_path / "s.toml").write_text(spec)
    result = CliRunner().invoke(app, ["run", str(tmp_path / "s.toml"), "--output", str(tmp_path / "out")])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    found = {f["set"]: f for f in report["findings"]}
    assert found["r"]["id"] == "brighter" and found["r"]["unit_of_n"] == "images" and found["r"]["n"] == 10
    assert result.exit_code == (0 if found["r"]["verdict"] == "does not hold" else 1), result.output
    check_probe(registry.get_probe("brightness"))  # the conformance kit checks the finding's shape
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.replace("finding:brighter/r", "finding:darker/r"))
    invalid = CliRunner().invoke(app, ["validate", str(bad)])
    assert invalid.exit_code == 2 and "no finding 'darker'" in invalid.output and "brighter" in invalid.output
