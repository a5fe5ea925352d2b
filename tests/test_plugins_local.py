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
