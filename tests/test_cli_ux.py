"""A newcomer's first hour, end to end through the CLI: help, init, run and its report, --only, --set, open."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddprobe.cli import app

SPEC = """
[study]
name = "ux"
device = "cpu"
[data]
train_per_class = 40
[train]
steps = 10
[pretrain]
epochs = 2
batch_size = 128
lr = 0.05
[models]
convnet = { arch = "convnet", width = 8, depth = 1 }
[distilled.r]
distiller = "random"
ipc = 2
[[probe]]
kind = "recognition"
expect = { "real_test/convnet" = ">= 0.0", "r/convnet" = ">= 1.5" }
[[probe]]
kind = "pixels"
[[probe]]
kind = "evaluate"
seeds = 1
"""

COMMANDS = [["init"], ["validate"], ["schema"], ["list"], ["plugins"], ["run"], ["distill"], ["compare"], ["plan"],
            ["open"]]


def invoke(*args: str, **kw):
    return CliRunner().invoke(app, list(args), **kw)


@pytest.mark.parametrize("command", [[], *COMMANDS], ids=lambda c: " ".join(c) or "ddprobe")
def test_short_help_and_plain_metavars(command):
    result = invoke(*command, "-h", env={"TERMINAL_WIDTH": "120"})
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "<bool>" not in result.output and "<list[str]>" not in result.output
    usage = next(line for line in result.output.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_run_usage_names_spec_in_capitals():
    result = invoke("run", "--help", env={"TERMINAL_WIDTH": "120"})
    assert "ddprobe run [OPTIONS] SPEC" in result.output
    for flag in ("--set", "--seed", "--device", "--open", "--quiet"):
        assert flag in result.output


def test_init_writes_a_spec_that_validates(tmp_path):
    path = tmp_path / "my-study.toml"
    result = invoke("init", str(path))
    assert result.exit_code == 0, result.output
    assert f"ddprobe run {path}" in result.output
    checked = invoke("validate", str(path))
    assert checked.exit_code == 0, checked.output
    assert "(1 distilled set, 1 model, 3 probes)" in checked.output
    assert 'name = "my-study"' in path.read_text()
    again = invoke("init", str(path))
    assert again.exit_code == 2 and "already exists" in again.output and "--force" in again.output
    assert invoke("init", str(path), "--force", "--name", "other").exit_code == 0
    assert 'name = "other"' in path.read_text()
    assert invoke("init", str(tmp_path / "x.txt")).exit_code == 2


def test_list_keeps_brackets_in_descriptions():
    result = invoke("list", "importers", env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "{'data': [[images, labels], ...], 'accs_all_exps'}" in result.output


def test_plugins_table_and_json():
    table = invoke("plugins", "--all", env={"COLUMNS": "200"})
    assert table.exit_code == 0
    assert "distribution" in table.output and "ddprobe.builtin.probes" in table.output
    assert "register_probes" in table.output
    data = json.loads(invoke("plugins", "--all", "--json").output)
    assert any(p["name"] == "ddprobe.builtin.probes" for p in data)


def _html_text(path: Path) -> str:
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", path.read_text())


def test_run_report_only_quiet_and_open(tmp_path, monkeypatch):
    from ddprobe.report.figures import read_description

    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    out = tmp_path / "out"
    result = invoke("run", str(spec), "-o", str(out))
    assert result.exit_code == 1, result.output
    # the console: one number format, a status line, an overall progress line in logs
    assert "probe 1 of 3: recognition" in result.output and "probe 3 of 3: evaluate" in result.output
    assert "expectation failed · 1 of 2 expectations failed · 3 probes" in result.output
    assert "± 0" not in result.output and "(n=1)" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "expectation failed"
    assert report["distilled"]["r"]["figure"] == "figures/distilled-r.png"

    html = _html_text(out / "report.html")
    verdict = html.index("class='verdict expectation-failed'")
    assert verdict < html.index("<nav>") < html.index("id='distilled-sets'") < html.index("id='probe-recognition'")
    assert "r/convnet" in html[verdict:html.index("<nav>")]  # the failed expectation leads the report
    assert "alt='images of r'" in html
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", html)
    assert len(captions) == 3 and not any(c.endswith(".png") or "recognition-recognition" in c for c in captions)
    assert "± 0" not in html and ".000<" not in html
    md = (out / "report.md").read_text()
    assert "**Result: expectation failed**" in md and "![images of r](figures/distilled-r.png)" in md
    figure = read_description(out / "figures" / "recognition-recognition.png")
    assert figure["axes"][0]["ylabel"] == "recognition accuracy"

    # --only: a cached probe says so, the other probes' files are gone, --quiet still prints the result
    (out / "figures" / "notes.txt").write_text("mine")  # not a stale figure: left alone
    opened = []
    monkeypatch.setattr("webbrowser.open", lambda url: opened.append(url) or True)
    only = invoke("run", str(spec), "-o", str(out), "--only", "pixels", "--quiet", "--open")
    assert only.exit_code == 0, only.output
    assert only.output.strip().splitlines()[0].startswith("passed · no expectations · 1 probe")
    assert sorted(p.name for p in (out / "figures").iterdir()) == ["distilled-r.png", "notes.txt",
                                                                    "pixels-density.png"]
    assert sorted(p.name for p in (out / "tables").iterdir()) == ["pixels-pixel_stats.csv"]
    html = _html_text(out / "report.html")
    assert "cached: loaded in" in html and "computed in" in html
    assert opened == [(out / "report.html").resolve().as_uri()]

    # ddprobe open: the run folder, or the newest run under a folder of runs
    opened.clear()
    assert invoke("open", str(out)).exit_code == 0 and opened == [(out / "report.html").resolve().as_uri()]
    assert invoke("open", str(tmp_path)).exit_code == 0 and len(opened) == 2
    missing = invoke("open", str(tmp_path / "nothing"))
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_set_seed_and_device_overrides(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC)
    out = tmp_path / "o"
    result = invoke("run", str(spec), "-o", str(out), "--only", "pixels", "-q", "--seed", "7", "--device", "cpu",
                    "--set", 'report.formats=["json"]', "--set", "probe.pixels.bins=12")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["study"]["seed"] == 7 and not (out / "report.html").exists()
    bad = invoke("run", str(spec), "-o", str(out), "--set", "train.steps=many")
    assert bad.exit_code == 2 and "train.steps" in bad.output
    typo = invoke("run", str(spec), "--set", "probe.pixel.bins=3")
    assert typo.exit_code == 2 and "'pixel' names no entry" in typo.output
    assert invoke("run", str(spec), "--set", "novalue").exit_code == 2
