"""One test per plugin hook (``test_hook_<name>``): a plugin defined in the test implements it and ddprobe uses it.

tests/test_meta_hooks.py fails when a hook in ddprobe/hookspecs.py has no test here or no heading in
docs/plugins/hooks.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel, ConfigDict

from ddprobe import DistilledSet, LabeledData, Manifest, ProbeResult, hookimpl
from ddprobe.spec import load_spec
from ddprobe.study import run_study

SPEC = """
[study]
name = "hooks"
device = "cpu"
control = false
cache_dir = "cache"

[data]
dataset = "{dataset}"
{data_options}

[models]
m = {{ arch = "{arch}" {model_options} }}

[distilled.s]
{distilled}

[[probe]]
kind = "{probe}"

[report]
formats = [{formats}]
"""


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CountProbe:
    name = "count"
    description = "how many images each distilled set has"
    Options = Empty

    def run(self, ctx, options):
        return ProbeResult({f"{name}/images": float(len(ds)) for name, ds in ctx.distilled.items()}, summary="ok")


def write_spec(tmp_path: Path, *, dataset="digits", data_options="train_per_class = 5", arch="convnet",
               model_options=", width = 4, depth = 1", distilled='distiller = "random"\nipc = 1', probe="count",
               formats='"json"') -> Path:
    path = tmp_path / "study.toml"
    path.write_text(SPEC.format(dataset=dataset, data_options=data_options, arch=arch, model_options=model_options,
                                distilled=distilled, probe=probe, formats=formats))
    return path


class ProbePlugin:
    __name__ = "count-probe"

    @hookimpl
    def register_probes(self, register):
        register(CountProbe())


def test_hook_register_probes(ddprobe_register, tmp_path):
    ddprobe_register(ProbePlugin())
    results = run_study(write_spec(tmp_path), tmp_path / "out")
    assert results.exit_code == 0
    assert results.probes[0].result.metrics == {"s/images": 10.0}


def test_hook_register_datasets(ddprobe_register, tmp_path):
    from ddprobe.data import InputSpace, RealData

    class Blobs:
        name = "blobs"
        description = "two classes of constant 4x4 images"

        class Options(Empty):
            per_class: int = 3

        def load(self, options, root):
            x = torch.cat([torch.zeros(options.per_class, 1, 4, 4), torch.ones(options.per_class, 1, 4, 4)])
            y = torch.arange(2).repeat_interleave(options.per_class)
            data = LabeledData(x, y, ["zero", "one"])
            return RealData("blobs", data, data, InputSpace(mean=[0.0], std=[1.0], shape=[1, 4, 4]))

    class Plugin:
        __name__ = "blobs-dataset"

        @hookimpl
        def register_datasets(self, register):
            register(Blobs())

    ddprobe_register(Plugin())
    ddprobe_register(ProbePlugin())
    results = run_study(write_spec(tmp_path, dataset="blobs", data_options="per_class = 4"), tmp_path / "out")
    assert results.probes[0].result.metrics == {"s/images": 2.0}


def test_hook_register_models(ddprobe_register, tmp_path):
    class Linear:
        name = "linear"
        description = "a linear classifier on flattened images"

        class Options(Empty):
            bias: bool = True

        def build(self, options, input_shape, num_classes):
            c, h, w = input_shape
            return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, num_classes, bias=options.bias))

    class Plugin:
        __name__ = "linear-model"

        @hookimpl
        def register_models(self, register):
            register(Linear())

    ddprobe_register(Plugin())
    spec = load_spec(write_spec(tmp_path, arch="linear", model_options=", bias = false", probe="pixels"))
    net = spec.models["m"].build((1, 8, 8), 10)
    assert net[1].bias is None and net[1].in_features == 64


def test_hook_register_distillers(ddprobe_register, tmp_path):
    class FirstImages:
        name = "first"
        description = "the first ipc training images of each class"
        Options = Empty

        def distill(self, real, ipc, options, ctx):
            index = torch.cat([ix[:ipc] for ix in real.train.class_indices()])
            sub = real.train.subset(index)
            return DistilledSet(sub.images.clone(), sub.labels.clone(), real.classes, manifest=Manifest())

    class Plugin:
        __name__ = "first-distiller"

        @hookimpl
        def register_distillers(self, register):
            register(FirstImages())

    ddprobe_register(Plugin())
    ddprobe_register(ProbePlugin())
    results = run_study(write_spec(tmp_path, distilled='distiller = "first"\nipc = 2'), tmp_path / "out")
    assert results.distilled["s"].distiller == "first"
    assert results.probes[0].result.metrics == {"s/images": 20.0}


def test_hook_register_importers(ddprobe_register, tmp_path):
    class JsonImporter:
        name = "json-set"
        description = "a .dset.json file: {images: [[...]], labels: [...]}"

        def sniff(self, path):
            return path.name.endswith(".dset.json")

        def load(self, path):
            obj = json.loads(path.read_text())
            images = torch.tensor(obj["images"], dtype=torch.float32)
            labels = torch.tensor(obj["labels"], dtype=torch.long)
            return DistilledSet(images, labels, [str(i) for i in range(10)],
                                manifest=Manifest(importer=self.name, source_file=str(path)))

    class Plugin:
        __name__ = "json-importer"

        @hookimpl
        def register_importers(self, register):
            register(JsonImporter())

    ddprobe_register(Plugin())
    ddprobe_register(ProbePlugin())
    (tmp_path / "mine.dset.json").write_text(json.dumps({"images": torch.zeros(10, 1, 8, 8).tolist(),
                                                         "labels": list(range(10))}))
    results = run_study(write_spec(tmp_path, distilled='path = "mine.dset.json"'), tmp_path / "out")
    assert results.exit_code == 0, results.errors
    assert results.probes[0].result.metrics == {"s/images": 10.0}


def test_hook_register_reporters(ddprobe_register, tmp_path):
    class CsvReporter:
        name = "metrics-csv"
        description = "every metric as probe,metric,value"

        def write(self, results, directory):
            lines = [f"{p.id},{k},{v}" for p in results.probes for k, v in p.result.metrics.items()]
            (Path(directory) / "metrics.csv").write_text("\n".join(lines) + "\n")

    class Plugin:
        __name__ = "csv-reporter"

        @hookimpl
        def register_reporters(self, register):
            register(CsvReporter())

    ddprobe_register(Plugin())
    ddprobe_register(ProbePlugin())
    run_study(write_spec(tmp_path, formats='"metrics-csv"'), tmp_path / "out")
    assert (tmp_path / "out" / "metrics.csv").read_text() == "count,s/images,10.0\n"


def test_hook_register_influence_backends(ddprobe_register, tmp_path):
    from pydantic import Field

    from ddprobe.errors import PluginError
    from ddprobe.influence import BACKENDS, BackendResult, Explicit, InfluenceBackend, get_backend

    class SignedExplicit(InfluenceBackend):
        name = "signed-explicit"
        description = "the explicit backend's scores times a sign (tests that options reach the backend)"

        class Options(InfluenceBackend.Options):
            sign: int = Field(1, description="+1 or -1")

        def _compute(self, problem):
            res = Explicit().compute(problem)
            return BackendResult(self.options.sign * res.scores, info={"sign": self.options.sign})

    class Plugin:
        __name__ = "signed-backend"

        @hookimpl
        def register_influence_backends(self, register):
            register(SignedExplicit)

    ddprobe_register(Plugin())
    assert BACKENDS["signed-explicit"] is SignedExplicit and BACKENDS.owner("signed-explicit") == "signed-backend"
    assert get_backend("signed-explicit", {"sign": -1}).options.sign == -1
    from typer.testing import CliRunner

    from ddprobe.cli import app

    listed = CliRunner().invoke(app, ["list", "influence-backends"])
    assert listed.exit_code == 0 and "ekfac" in listed.output and "signed-explicit" in listed.output
    assert "(signed-backend)" in listed.output
    path = write_spec(tmp_path, probe="influence")
    path.write_text(path.read_text().replace('kind = "influence"', """kind = "influence"
inits = 1
k = 2
test_images = 30
gallery_classes = 0
recipe = { steps = 5 }
backends = ["explicit", "signed-explicit"]
backend_options = { signed-explicit = { sign = -1 } }"""))
    results = run_study(path, tmp_path / "out")
    assert results.exit_code == 0, results.errors
    audit = results.probes[0].result.tables["audit"].set_index("backend")
    assert audit.loc["signed-explicit", "status"] == "ok"
    assert audit.loc["signed-explicit", "info"] == {"sign": -1}
    assert audit.loc["signed-explicit", "spearman"] == pytest.approx(-audit.loc["explicit", "spearman"])

    class AsInstance:
        __name__ = "instance-backend"

        @hookimpl
        def register_influence_backends(self, register):
            register(type("Inst", (SignedExplicit,), {"name": "inst"})())

    ddprobe_register(AsInstance())
    with pytest.raises(PluginError, match="must be registered as a class"):
        get_backend("inst")


def test_hook_register_commands(ddprobe_register):
    import typer
    from typer.testing import CliRunner

    from ddprobe.plugins import pm

    class Plugin:
        __name__ = "hello-command"

        @hookimpl
        def register_commands(self, app):
            @app.command()
            def hello(name: str = "world"):
                """Say hello."""
                typer.echo(f"hello {name}")

    ddprobe_register(Plugin())
    app = typer.Typer()  # a fresh app: the real one gets plugin commands once, when ddprobe.cli is imported

    @app.command()
    def version():
        """Print the version."""

    pm.hook.register_commands(app=app)
    result = CliRunner().invoke(app, ["hello", "--name", "ddprobe"])
    assert result.exit_code == 0 and result.output == "hello ddprobe\n"


class Recorder:
    __name__ = "recorder"

    def __init__(self):
        self.calls = []

    @hookimpl
    def study_started(self, study):
        self.calls.append(("study_started", sorted(study.context.distilled), [p.id for p in study.spec.probes]))

    @hookimpl
    def probe_finished(self, study, probe, result):
        self.calls.append(("probe_finished", probe.id, result.status, dict(result.result.metrics)))

    @hookimpl
    def study_finished(self, study, results):
        self.calls.append(("study_finished", [p.id for p in results.probes], results.exit_code))


@pytest.fixture
def recorded(ddprobe_register, tmp_path):
    recorder = ddprobe_register(Recorder())
    ddprobe_register(ProbePlugin())
    run_study(write_spec(tmp_path), tmp_path / "out")
    return recorder.calls


def test_hook_study_started(recorded):
    assert recorded[0] == ("study_started", ["s"], ["count"])


def test_hook_probe_finished(recorded):
    assert recorded[1] == ("probe_finished", "count", "ok", {"s/images": 10.0})


def test_hook_study_finished(recorded):
    assert recorded[2:] == [("study_finished", ["count"], 0)]
