"""Spec validation: every kind of mistake gives exit code 2 and a message naming file, key and valid names."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.errors import SpecError
from ddprobe.spec import load_spec

GOOD = """
[study]
name = "t"
[models]
convnet = { arch = "convnet", width = 8, depth = 1 }
[distilled.r]
distiller = "random"
ipc = 1
[[probe]]
kind = "recognition"
models = ["convnet"]
expect = { "r/convnet" = ">= 0.5" }
"""


def write(tmp_path, text, name="spec.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(SpecError) as info:
        load_spec(path)
    return str(info.value), path


def test_good_spec_loads(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.study.name == "t"
    assert list(spec.models) == ["convnet"] and spec.models["convnet"].options.width == 8
    assert spec.distilled["r"].ipc == 1
    assert spec.probes[0].id == "recognition" and spec.probes[0].expect[0].threshold == 0.5
    assert len(spec.sha256) == 64


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[studdy]\nname='x'", ["studdy: unknown section", "did you mean 'study'"]),
        ("[train]\nlr = 'fast'", ["train.lr:"]),
        ("[train]\nstepz = 3", ["train.stepz: unknown key 'stepz'", "'steps'"]),
        ("[data]\ndataset = 'digitz'", ["data.dataset: unknown dataset 'digitz'", "'digits'"]),
        ("[models]\nc = { arch = 'convnett' }", ["models.c.arch: unknown model 'convnett'", "'convnet'"]),
        ("[models]\nc = { arch = 'convnet', widht = 3 }", ["models.c.widht: unknown key 'widht'", "'width'"]),
        ("[models]\nc = { arch = 'convnet', width = 'wide' }", ["models.c.width:"]),
        ("[distilled.a]\ndistiller = 'rnd'\nipc = 1", ["distilled.a.distiller: unknown distiller 'rnd'",
                                                    "'random'"]),
        ("[distilled.a]\ndistiller = 'random'", ["distilled.a.ipc: required key is missing"]),
        ("[distilled.a]\ndistiller = 'dm'\nipc = 1\nmodel = 'convnett'",
         ["distilled.a.model: no model 'convnett' in [models]", "'convnet'"]),
        ("[distilled.a]\ndistiller = 'random'\nipc = 0", ["distilled.a.ipc: must be a positive integer"]),
        ("[[probe]]\nkind = 'recognitoin'", ["probe[0].kind: unknown probe 'recognitoin'", "'recognition'"]),
        ("[[probe]]\nkind = 'recognition'\nmodel = ['x']", ["probe[0].model: unknown key 'model'", "'models'"]),
        ("[[probe]]\nkind = 'recognition'\nmodels = ['resnet']",
         ["probe[0].models[0]: no model 'resnet' in [models]"]),
        ("[[probe]]\nkind = 'recognition'\nexpect = { a = 'about 3' }",
         ["probe[0].expect.a: cannot read expectation 'about 3'"]),
        ("[report]\nformats = ['json', 'pdf']", ["report.formats[1]: unknown reporter 'pdf'"]),
        ("[study]\nplugins = ['missing.py']", ["study.plugins[0]: plugin file", "does not exist"]),
    ],
)
def test_spec_errors_name_file_key_and_valid_names(tmp_path, text, expected):
    message, path = problems(tmp_path, text)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message


def test_every_problem_is_reported_at_once(tmp_path):
    message, _ = problems(tmp_path, "[train]\nstepz = 1\n[data]\ndataset = 'nope'\n[[probe]]\nkind = 'x'")
    assert "train.stepz: unknown key" in message and "data.dataset" in message and "probe[0].kind" in message


def test_invalid_toml_and_missing_file(tmp_path):
    message, _ = problems(tmp_path, "[study\nname = 1")
    assert "not valid TOML" in message
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "nope.toml")


def test_cli_validate_exit_codes(tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["validate", str(write(tmp_path, GOOD))])
    assert ok.exit_code == 0, ok.output
    assert "ok (1 distilled set, 1 model, 1 probe)" in ok.output
    bad = runner.invoke(app, ["validate", str(write(tmp_path, "[train]\nstepz = 1", "bad.toml"))])
    assert bad.exit_code == 2
    assert "bad.toml: train.stepz: unknown key 'stepz'; did you mean 'steps'?" in bad.output


def test_cli_run_invalid_spec_exits_2_and_runs_nothing(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, "[[probe]]\nkind = 'nope'")), "-o", str(out)])
    assert result.exit_code == 2
    assert not out.exists()


def test_schema_lists_plugins_and_their_options():
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    probes = schema["properties"]["probe"]["items"]["anyOf"]
    kinds = {v["properties"]["kind"]["const"] for v in probes}
    assert {"evaluate", "recognition", "pixels"} <= kinds
    rec = next(v for v in probes if v["properties"]["kind"]["const"] == "recognition")
    assert "models" in rec["properties"] and "expect" in rec["properties"]


def test_schema_validates_the_shipped_default_spec():
    import jsonschema
    from conftest import REPO

    from ddprobe.spec import json_schema, read_toml

    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    for name in ("study.toml", "ci-gate.toml", "paper-cifar10.toml"):
        raw, _ = read_toml(REPO / "specs" / name)
        jsonschema.validate(raw, schema)
    bad, _ = read_toml(REPO / "specs" / "study.toml")
    bad["probe"][0]["recipe"] = {"stepz": 3}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
