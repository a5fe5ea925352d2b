"""The ddprobe command line end to end on digits, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from ddprobe.cli import app

TINY = """
[study]
name = "cli"
[train]
steps = 10
[pretrain]
epochs = 3
batch_size = 128
lr = 0.05
[models]
convnet = { arch = "convnet", width = 8, depth = 1 }
[distilled.r]
distiller = "random"
ipc = 2
[[probe]]
kind = "recognition"
expect = { "real_test/convnet" = "%s" }
[[probe]]
kind = "pixels"
"""


def spec(tmp_path: Path, expect: str = ">= 0.2") -> Path:
    path = tmp_path / "s.toml"
    path.write_text(TINY % expect)
    return path


def test_help_does_not_import_torch():
    code = "import sys, ddprobe.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    out = subprocess.run([sys.executable, "-m", "ddprobe", "--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout and "validate" in out.stdout


def test_version():
    from ddprobe import __version__

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ddprobe {__version__}"


def test_list_shows_builtins_with_descriptions():
    result = CliRunner().invoke(app, ["list", "probes"])
    assert result.exit_code == 0
    assert "recognition" in result.output and "real-trained models" in result.output
    everything = CliRunner().invoke(app, ["list"])
    for kind in ("datasets", "models", "distillers", "probes", "importers", "reporters"):
        assert kind in everything.output
    assert "digits" in everything.output and "resnet18" in everything.output
    bad = CliRunner().invoke(app, ["list", "probs"])
    assert bad.exit_code == 2 and "did you mean 'probes'" in bad.output


def test_plugins_json():
    result = CliRunner().invoke(app, ["plugins", "--all", "--json"])
    data = json.loads(result.output)
    probes = next(p for p in data if p["name"] == "ddprobe.builtin.probes")
    assert probes["hooks"] == ["register_probes"]


def test_run_end_to_end_exit_codes_and_files(tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["run", str(spec(tmp_path)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "distilled sets" in result.output and "recognition" in result.output
    assert "passed" in result.output and "1 expectation held" in result.output
    assert json.loads((out / "report.json").read_text())["exit_code"] == 0
    assert (out / "report.md").read_text().startswith("# ddprobe study `cli`")
    failing = CliRunner().invoke(app, ["run", str(spec(tmp_path, "> 1.0")), "-o", str(out), "-q"])
    assert failing.exit_code == 1
    only = CliRunner().invoke(app, ["run", str(spec(tmp_path)), "-o", str(out), "--only", "pixel"])
    assert only.exit_code == 2 and "did you mean 'pixels'" in only.output


def test_distill_writes_canonical_sets_and_grids(tmp_path):
    from ddprobe.data import load_distilled

    out = tmp_path / "sets"
    result = CliRunner().invoke(app, ["distill", str(spec(tmp_path)), "-o", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_distilled(out / "r.safetensors")
    assert len(ds) == 20 and ds.manifest.distiller == "random" and ds.manifest.ipc == 2
    assert (out / "r.png").read_bytes()[:4] == b"\x89PNG"
