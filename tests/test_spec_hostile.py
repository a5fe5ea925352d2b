"""Hostile and broken specs: ``ddprobe validate`` refuses each with exit 2, naming file, key and what is valid.

Every case goes through the command line, so "no traceback" is what a user sees, not just what load_spec raises.
"""

from __future__ import annotations

import os

import pytest
import torch
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.errors import SpecError
from ddprobe.spec import load_spec

STUDY = """
[study]
name = "t"
device = "cpu"
"""
BODY = """
[models]
convnet = { arch = "convnet", width = 8, depth = 1 }
[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 1
"""
BASE = STUDY + BODY


def compose(text: str) -> str:
    """The base spec with ``text`` added: top-level keys first, a [study] table instead of the base's."""
    if text.startswith(("data", "probe =")):
        return text + "\n" + BASE
    if text.startswith("[study]"):
        return text + "\n" + BODY
    return BASE + text


def validate(path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def write(tmp_path, text: str, name: str = "spec.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


CASES = [
    # malformed structure
    ('data = "str"', ["data: must be a table"]),
    ('[[probe]]\nkind = ["evaluate"]', ["probe[0].kind: must be a string naming a probe (got list)", "'evaluate'"]),
    ('[[probe]]\nkind = 3', ["probe[0].kind: must be a string naming a probe"]),
    ('probe = "evaluate"', ["probe: write each probe as a [[probe]] table"]),
    ('[[probe]]\nkind = "evaluate"\nexpect = ">= 1"', ["probe[0].expect: must be a table"]),
    ('[distilled.x]\npath = 3', ["distilled.x.path: must be a file or folder name"]),
    # ranges of the study's recipes and of each plugin's options
    ("[train]\nbatch_size = -1", ["train.batch_size: Input should be greater than or equal to 1", "'full'"]),
    ("[train]\nbatch_size = 0", ["train.batch_size"]),
    ("[train]\nlr = -0.1", ["train.lr: Input should be greater than 0"]),
    ('[train]\naugment = "nope"', ["train.augment: unknown augmentation 'nope'", "'none'"]),
    ("[pretrain]\nsteps = -3\nepochs = -1", ["pretrain.steps", "pretrain.epochs"]),
    ('[[probe]]\nkind = "mixing"\nk = [-1]', ["probe[0].k: counts must be >= 0"]),
    ('[[probe]]\nkind = "mixing"\nk = []', ["probe[0].k: lists no count"]),
    ('[[probe]]\nkind = "evaluate"\nrecipe = { steps = -1 }', ["probe[0].recipe.steps: Input should be greater"]),
    ('[[probe]]\nkind = "evaluate"\nrecipe = { augment = "nope" }', ["probe[0].recipe.augment: unknown augmentation"]),
    ('[[probe]]\nkind = "evaluate"\nseeds = 0', ["probe[0].seeds: Input should be greater than or equal to 1"]),
    ('[[probe]]\nkind = "agreement"\nsubset_fraction = [0.5, 0.1]', ["probe[0].subset_fraction: must satisfy"]),
    ('[[probe]]\nkind = "hessian"\nstop = "pyhessian-0.1"', ["probe[0]: stop = 'pyhessian-0.1' needs estimator"]),
    ('[[probe]]\nkind = "hessian"\nbudget = 10\ntop_k = 4', ["probe[0]: budget 10 leaves fewer than 8 products"]),
    ('[[probe]]\nkind = "hessian"\ncheckpoints = []', ["probe[0].checkpoints: checkpoints = [] lists no step"]),
    ('[[probe]]\nkind = "sensitivity"\npresets = []\ninclude_study = false', ["probe[0]: no cell to train"]),
    ('[distilled.m]\ndistiller = "mtt"\nipc = 1\nexpert_epochs = 5\nexpert_train_epochs = 2',
     ["distilled.m: expert_epochs = 5 exceeds expert_train_epochs = 2"]),
    ('[distilled.m]\ndistiller = "dm"\nipc = 1\ndsa_strategy = "spin"', ["distilled.m.dsa_strategy: unknown DSA"]),
    ('[distilled.m]\ndistiller = "dm"\nipc = 1\nmodel = { arch = "convnett" }',
     ["distilled.m.model: unknown model 'convnett'"]),
    ('[study]\ndevice = "gpu"', ["study.device: valid devices: auto, cpu, cuda, cuda:N"]),
    # names that would become paths
    ('[study]\nname = "../../evil"', ["study.name: study name would not be a plain file name", "'_', '.' and '-'"]),
    ('[study]\nname = "a/b"', ["study.name: study name would not be a plain file name"]),
    ('[study]\nname = ""', ["study.name: study name must not be empty"]),
    ('[study]\nname = ".hidden"', ["study.name: study name would not be a plain file name"]),
    ('[study]\nname = "a\\u0000b"', ["study.name: study name would not be a plain file name"]),
    ('[study]\nname = "a\\\\b"', ["study.name: study name would not be a plain file name"]),
    ('[[probe]]\nkind = "pixels"\nid = "../../escaped"', ["probe[0].id: probe id '../../escaped' would not be"]),
    ('[[probe]]\nkind = "pixels"\nid = "a/b"', ["probe[0].id: probe id 'a/b' would not be a plain file name"]),
    ('[[probe]]\nkind = "pixels"\nid = ""', ["probe[0].id: probe id '' must not be empty"]),
    ('[[probe]]\nkind = "pixels"\nid = 5', ["probe[0].id: probe id must be a string"]),
    ('[distilled."../up"]\ndistiller = "random"\nipc = 1', ["distilled.../up: set name '../up' would not be"]),
    ('[distilled."a b"]\ndistiller = "random"\nipc = 1', ["set name 'a b' would not be a plain file name"]),
    ('[models."x/y"]\narch = "mlp"', ["models.x/y: model name 'x/y' would not be a plain file name"]),
    # cross-references and expectation metrics
    ('[[probe]]\nkind = "evaluate"\nsets = ["dn"]', ["probe[0].sets[0]: no distilled set 'dn'", "'dm'"]),
    ('[[probe]]\nkind = "evaluate"\nsets = ["random_ipc5"]',
     ["probe[0].sets[0]: no distilled set 'random_ipc5' (the study adds a random_ipcK control only",
      "did you mean 'random_ipc1'"]),
    ('[study]\ncontrol = false\n[[probe]]\nkind = "evaluate"\nsets = ["random_ipc1"]',
     ["probe[0].sets[0]: no distilled set 'random_ipc1'"]),
    ('[[probe]]\nkind = "evaluate"\nexpect = { "dm/convnett" = ">= 0.5" }',
     ["probe[0].expect.dm/convnett: probe 'evaluate' cannot produce a metric named 'dm/convnett'",
      "did you mean 'dm/convnet'"]),
    ('[[probe]]\nkind = "evaluate"\nsets = ["dm"]\nexpect = { "random_ipc1/convnet" = ">= 0.5" }',
     ["probe[0].expect.random_ipc1/convnet: probe 'evaluate' cannot produce"]),
    ('[[probe]]\nkind = "pixels"\nexpect = { "dm/outside" = "<= 0.1" }', ["did you mean 'dm/outside_01'"]),
    ('[[probe]]\nkind = "evaluate"\nexpect = { "dm/convnet" = ">= random_ipc2/convnet + 0.1" }',
     ["probe[0].expect.dm/convnet: probe 'evaluate' cannot produce the metric it compares with, "
      "'random_ipc2/convnet'",
      "did you mean 'random_ipc1/convnet'"]),
    ('[[probe]]\nkind = "mixing"\nk = [0, 2]\nexpect = { "*/mlp/k2" = ">= 0.1" }',
     ["probe[0].expect.*/mlp/k2: probe 'mixing' cannot produce"]),
    ('[[probe]]\nkind = "mixing"\nk = [0, 2]\nexpect = { "dm/convnet/k22" = ">= 0.1" }',
     ["probe[0].expect.dm/convnet/k22: probe 'mixing' cannot produce"]),
    ('[[probe]]\nkind = "recognition"\nexpect = { "dm/convnet/final" = ">= 0.1" }',
     ["probe 'recognition' cannot produce a metric named 'dm/convnet/final'"]),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[0][:40] for c in CASES])
def test_hostile_spec_is_exit_2_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, compose(text))
    code, output = validate(path)
    assert code == 2, output
    assert f"{path}: " in output
    flat = " ".join(output.split())  # rich wraps long lines
    for fragment in expected:
        assert fragment in flat, flat


VALID = [
    '[[probe]]\nkind = "evaluate"\nexpect = { "dm/convnet" = ">= 0.1", "random_ipc1/convnet" = ">= 0.1" }',
    '[[probe]]\nkind = "evaluate"\nexpect = { "*/convnet" = ">= 0.1", "dm/convnet" = ">= random_ipc1/convnet + 0.1" }',
    '[[probe]]\nkind = "pixels"\nexpect = { "finding:pixels/dm" = "holds", "dm/outside_01" = ">= real/outside_01" }',
    '[[probe]]\nkind = "recognition"\nexpect = { "real_test/convnet" = ">= 0.1", "dm/*" = ">= 0" }',
    '[[probe]]\nkind = "mixing"\nk = [0, 250]\nexpect = { "dm/convnet/k180" = ">= 0", "dm/convnet/change" = "> 0" }',
    '[[probe]]\nkind = "sensitivity"\nexpect = { "random_ipc1/convnet/paper" = ">= 0", "dm/spread" = "<= 1" }',
    '[[probe]]\nkind = "pixels"\nid = "pixels.v2-final_1"\nexpect = { "real/outside_01" = "<= 0.1" }',
    '[study]\ncontrol = true\nname = "Study_1.v2-x"',
    '[[probe]]\nkind = "evaluate"\nsets = ["random_ipc1", "dm"]',
]


@pytest.mark.parametrize("text", VALID, ids=[v[:40] for v in VALID])
def test_reachable_expectations_and_safe_names_validate(tmp_path, text):
    code, output = validate(write(tmp_path, compose(text)))
    assert code == 0, output


def test_imported_sets_allow_any_control_name(tmp_path):
    torch.save({"data": torch.zeros(10, 1, 8, 8), "label": torch.arange(10)}, tmp_path / "set.pt")
    text = BASE + ('[distilled.f]\npath = "set.pt"\n[[probe]]\nkind = "evaluate"\n'
                   'expect = { "random_ipc3/convnet" = ">= 0", "f/convnet" = ">= 0" }\n'
                   '[[probe]]\nkind = "pixels"\nsets = ["random_ipc3", "f"]')
    code, output = validate(write(tmp_path, text))
    assert code == 0, output


def test_directory_latin1_fifo_and_deep_nesting(tmp_path):
    code, output = validate(tmp_path)
    assert code == 2 and "is a directory" in output
    latin = tmp_path / "latin.toml"
    latin.write_bytes('[study]\nname = "caf\u00e9"\n'.encode("latin-1"))
    code, output = validate(latin)
    assert code == 2 and f"{latin}: is not UTF-8 text (byte 0xe9" in " ".join(output.split())
    deep = write(tmp_path, "a = " + "[" * 40 + "]" * 40, "deep.toml")
    code, output = validate(deep)
    assert code == 2 and "nested more than" in output
    deeper = write(tmp_path, "a = " + "[" * 50_000 + "]" * 50_000, "deeper.toml")
    code, output = validate(deeper)
    assert code == 2 and str(deeper) in output
    tables = write(tmp_path, "[" + ".".join(["t"] * 200) + "]\nx = 1", "tables.toml")
    code, output = validate(tables)
    assert code == 2 and "nested more than" in output
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "spec.fifo"
        os.mkfifo(fifo)
        code, output = validate(fifo)  # must not block reading it
        assert code == 2 and "not a regular file" in output


def test_error_names_the_spec_not_a_set_file(tmp_path):
    path = write(tmp_path, '[study]\nseeed = 1\n[distilled.x]\npath = "my_set.pt"', "shadow.toml")
    code, output = validate(path)
    assert code == 2
    assert f"{path}: study.seeed: unknown key 'seeed'; did you mean 'seed'?" in output
    assert "my_set.pt:" not in output


PLUGIN = '''
from pydantic import BaseModel
from ddprobe import hookimpl, ProbeResult


class Pixels:
    name = "pixels"
    description = "collides with the built-in"

    class Options(BaseModel):
        pass

    def run(self, ctx, options):
        return ProbeResult()


@hookimpl
def register_probes(register):
    register(Pixels())
'''


def test_plugin_name_colliding_with_a_builtin_is_refused_and_unloaded(tmp_path):
    (tmp_path / "clash.py").write_text(PLUGIN)
    path = write(tmp_path, '[study]\nplugins = ["clash.py"]\n[[probe]]\nkind = "pixels"')
    code, output = validate(path)
    flat = " ".join(output.split())
    assert code == 2
    assert f"{path}: study.plugins[0]: plugin file clash.py: probe name 'pixels' is registered twice" in flat
    # the refused file is unloaded: the next spec sees the built-in again
    assert validate(write(tmp_path, '[[probe]]\nkind = "pixels"', "ok.toml"))[0] == 0


def test_plugin_file_calling_sys_exit_at_import_is_a_spec_problem(tmp_path):
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(0)\n")
    code, output = validate(write(tmp_path, '[study]\nplugins = ["exits.py"]'))
    assert code == 2 and "study.plugins[0]: plugin file exits.py failed to load: SystemExit(0)" in output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine has no CUDA")
def test_cuda_without_cuda_is_exit_2_at_validate(tmp_path):
    path = write(tmp_path, BASE.replace('device = "cpu"', 'device = "cuda"'))
    code, output = validate(path)
    assert code == 2 and f"{path}: study.device: 'cuda' but CUDA is not available" in " ".join(output.split())
    load_spec(path)  # the spec itself is fine: only this machine lacks the device
    for command in (["run", str(path), "-o", str(tmp_path / "out"), "-q"], ["plan", str(path), "--no-measure"]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2 and "study.device: 'cuda' but CUDA is not available" in result.output
    assert not (tmp_path / "out").exists()


def test_missing_imported_file_and_cache_dir_that_is_a_file(tmp_path):
    (tmp_path / "cachefile").write_text("x")
    path = write(tmp_path, BASE.replace('device = "cpu"', 'cache_dir = "cachefile"')
                 + '[distilled.f]\npath = "nope.pt"')
    code, output = validate(path)
    flat = " ".join(output.split())
    assert code == 2
    assert "study.cache_dir:" in flat and "is not a folder" in flat
    assert "distilled.f.path:" in flat and "nope.pt does not exist" in flat


def test_parse_spec_refuses_too_deep_python_input():
    from ddprobe.spec import parse_spec

    deep: dict = {}
    node = deep
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(SpecError, match="nested more than"):
        parse_spec({"study": deep})


DECLARING = '''
from pydantic import BaseModel
from ddprobe import hookimpl, ProbeResult


class Options(BaseModel):
    pass


class Silent:
    name = "silent"
    description = "declares nothing: its expectations are checked when it runs"
    Options = Options

    def run(self, ctx, options):
        return ProbeResult()


class Broken:
    name = "broken_declaration"
    description = "its metric_names raises: validate does not refuse the spec for that"
    Options = Options

    def metric_names(self, sets, models, options):
        raise RuntimeError("bug in the declaration")

    def run(self, ctx, options):
        return ProbeResult()


class Declares:
    name = "declares"
    description = "one metric per set"
    Options = Options

    def metric_names(self, sets, models, options):
        return [f"{s}/size" for s in sets]

    def run(self, ctx, options):
        return ProbeResult()


@hookimpl
def register_probes(register):
    register(Silent())
    register(Broken())
    register(Declares())
'''


def test_metric_names_are_optional_and_a_failing_declaration_is_ignored(tmp_path):
    (tmp_path / "declaring.py").write_text(DECLARING)
    head = STUDY.replace('device = "cpu"', 'device = "cpu"\nplugins = ["declaring.py"]') + BODY
    ok = head + ('[[probe]]\nkind = "silent"\nexpect = { "anything/at_all" = ">= 0" }\n'
                 '[[probe]]\nkind = "broken_declaration"\nexpect = { "anything" = ">= 0" }\n'
                 '[[probe]]\nkind = "declares"\nexpect = { "random_ipc1/size" = ">= 1", "dm/size" = ">= 1" }\n')
    assert validate(write(tmp_path, ok))[0] == 0
    bad = head + '[[probe]]\nkind = "declares"\nexpect = { "dm/sizes" = ">= 1" }\n'
    code, output = validate(write(tmp_path, bad, "bad.toml"))
    assert code == 2 and "probe[0].expect.dm/sizes: probe 'declares' cannot produce" in output
    assert "did you mean 'dm/size'" in " ".join(output.split())


def test_plugin_whose_registration_raises_is_a_spec_problem(tmp_path):
    (tmp_path / "raises.py").write_text("from ddprobe import hookimpl\n\n\n@hookimpl\ndef register_probes(register):\n"
                                        "    raise ValueError('no probes today')\n")
    code, output = validate(write(tmp_path, '[study]\nplugins = ["raises.py"]'))
    flat = " ".join(output.split())
    assert code == 2 and "study.plugins[0]: plugin file raises.py: plugin 'file:" in flat
    assert "register_probes raised ValueError: no probes today" in flat
    assert validate(write(tmp_path, '[[probe]]\nkind = "pixels"', "ok.toml"))[0] == 0
