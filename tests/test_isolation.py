"""Misbehaving plugins cannot take a study's report down, and nothing a study writes leaves its output folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ddprobe.cli import app
from ddprobe.spec import load_spec
from ddprobe.study import run_study

PLUGIN = '''
import sys

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel

from ddprobe import ProbeResult, hookimpl


class Options(BaseModel):
    pass


def probe(name, run):
    cls = type(name, (), {"name": name, "description": name, "Options": Options, "run": lambda self, c, o: run(c)})
    return cls()


class Custom(BaseException):
    pass


def escaping_figure(ctx):
    path = ctx.figure_path("../../../escaped")
    path.write_bytes(b"png")
    return ProbeResult({"x": 1.0}, figures={"a/../../b": path})


def raise_(exc):
    raise exc


PROBES = [
    probe("exits", lambda c: sys.exit(0)),
    probe("fake_interrupt", lambda c: raise_(KeyboardInterrupt())),
    probe("custom_base", lambda c: raise_(Custom("odd"))),
    probe("string_metric", lambda c: ProbeResult({"m": "high"})),
    probe("tensor_metric", lambda c: ProbeResult({"m": torch.tensor(0.5)})),
    probe("numpy_metric", lambda c: ProbeResult({"m": np.float32(0.5), "n": np.int64(3)})),
    probe("bad_table", lambda c: ProbeResult({"m": 1.0}, tables={"../../table": pd.DataFrame({"a": [1]})})),
    probe("not_a_result", lambda c: {"m": 1.0}),
    probe("escaping_figure", escaping_figure),
]


@hookimpl
def register_probes(register):
    for p in PROBES:
        register(p)


@hookimpl
def study_started(study):
    raise RuntimeError("started hook broke")


@hookimpl
def probe_finished(study, probe, result):
    sys.exit(7)


@hookimpl
def study_finished(study, results):
    raise ValueError("finished hook broke")
'''

SPEC = """
[study]
name = "iso"
device = "cpu"
cache_dir = "cache"
plugins = ["hostile_plugin.py"]
[models]
mlp = { arch = "mlp", hidden = 8, depth = 1 }
[distilled.r]
distiller = "random"
ipc = 1
[[probe]]
kind = "pixels"
[[probe]]
kind = "exits"
[[probe]]
kind = "fake_interrupt"
[[probe]]
kind = "custom_base"
[[probe]]
kind = "string_metric"
[[probe]]
kind = "tensor_metric"
[[probe]]
kind = "numpy_metric"
expect = { m = ">= 0.4", gone = ">= 0" }  # the plugin declares no metric names: "gone" fails when it runs
[[probe]]
kind = "bad_table"
[[probe]]
kind = "not_a_result"
[[probe]]
kind = "escaping_figure"
[report]
formats = ["json", "markdown", "junit", "html"]
"""


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if "__pycache__" not in p.parts}


@pytest.fixture()
def study_dir(tmp_path):
    (tmp_path / "hostile_plugin.py").write_text(PLUGIN)
    (tmp_path / "spec.toml").write_text(SPEC)
    return tmp_path


def test_misbehaving_probes_and_hooks_fail_alone_and_reports_are_written(study_dir):
    out = study_dir / "a" / "b" / "out"
    before = _files(study_dir)
    results = run_study(load_spec(study_dir / "spec.toml"), out)
    status = {p.id: (p.status, p.error) for p in results.probes}
    assert status["pixels"] == ("ok", None)
    assert status["exits"] == ("error", "SystemExit: sys.exit(0) was called")
    assert status["fake_interrupt"][1].startswith("KeyboardInterrupt: raised by plugin code itself")
    assert status["custom_base"] == ("error", "Custom: odd")
    assert "metric 'm' is str 'high', not a number" in status["string_metric"][1]
    assert "metric 'm' is Tensor" in status["tensor_metric"][1]
    assert status["numpy_metric"] == ("ok", None)
    numpy_record = next(p for p in results.probes if p.id == "numpy_metric")
    assert numpy_record.result.metrics == {"m": 0.5, "n": 3.0}
    assert all(type(v) is float for v in numpy_record.result.metrics.values())
    assert numpy_record.checks[0].passed and not numpy_record.checks[1].passed
    assert "table name '../../table' would not be a plain file name" in status["bad_table"][1]
    assert "run() returned dict, not a ProbeResult" in status["not_a_result"][1]
    assert status["escaping_figure"] == ("ok", None)
    assert results.exit_code == 3

    # hooks that raise (or call sys.exit) are warnings naming the plugin; every probe still ran
    plugin = f"file:{(study_dir / 'hostile_plugin.py').resolve()}"
    assert f"plugin {plugin!r}: hook study_started raised RuntimeError: started hook broke" in results.warnings
    assert f"plugin {plugin!r}: hook study_finished raised ValueError: finished hook broke" in results.warnings
    assert sum(f"plugin {plugin!r}: hook probe_finished raised SystemExit: sys.exit(7) was called" == w
               for w in results.warnings) == len(results.probes)

    report = json.loads((out / "report.json").read_text())
    assert report["exit_code"] == 3 and report["warnings"] == results.warnings
    assert report["probes"][0]["metrics"]["real/outside_01"] == pytest.approx(0.0)
    assert "finished hook broke" in (out / "report.md").read_text()
    junit = (out / "junit.xml").read_text()
    assert 'errors="7"' in junit and "sys.exit(0)" in junit
    assert (out / "tables" / "pixels-pixel_stats.csv").exists()
    assert "no metric named &#x27;gone&#x27;" in (out / "report.html").read_text()  # the reason, not an empty value

    # nothing was written outside the output folder and the cache
    new = {p.relative_to(study_dir) for p in _files(study_dir) - before}
    outside = [p for p in new if p.parts[0] not in ("a", "cache")]
    assert not outside, outside
    assert all(p.parts[:3] == ("a", "b", "out") for p in new if p.parts[0] == "a" and len(p.parts) > 2), new
    assert (out / "figures" / "escaping_figure-.._.._.._escaped.png").is_file()

    # the rerun reads the same results back from the cache (figure files named safely there too)
    again = run_study(load_spec(study_dir / "spec.toml"), out)
    assert {p.id: p.cached for p in again.probes if p.status == "ok"} == {
        "pixels": True, "numpy_metric": True, "escaping_figure": True}
    assert not [p for p in _files(study_dir) - before if p.relative_to(study_dir).parts[0] not in ("a", "cache")]


def test_output_that_is_a_file_is_exit_2(study_dir):
    (study_dir / "spec.toml").write_text('[study]\nname = "x"\ndevice = "cpu"\n[[probe]]\nkind = "pixels"')
    target = study_dir / "taken"
    target.write_text("not a folder")
    for args in (["run", str(study_dir / "spec.toml"), "-o", str(target), "-q"],
                 ["run", str(study_dir / "spec.toml"), "-o", str(target / "sub"), "-q"],
                 ["distill", str(study_dir / "spec.toml"), "-o", str(target)]):
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "is not a folder" in " ".join(result.output.split())
    assert target.read_text() == "not a folder"


def test_a_real_interrupt_still_stops_the_study(study_dir):
    import os
    import signal

    from ddprobe.study import _InterruptWatch

    with pytest.raises(KeyboardInterrupt), _InterruptWatch() as watch:  # noqa: PT012
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000_000):  # the handler runs between bytecodes
            pass
    assert watch.signalled and isinstance(watch.raised, KeyboardInterrupt) and watch.from_user(watch.raised)
    assert not _InterruptWatch().from_user(SystemExit(0))
    with _InterruptWatch() as quiet:
        pass
    assert quiet.from_user(KeyboardInterrupt())  # one raised after the watched code returned is the user's
    with pytest.raises(KeyboardInterrupt), _InterruptWatch() as fake:  # noqa: PT012
        raise KeyboardInterrupt
    assert not fake.from_user(fake.raised)  # raised by the code itself, with no signal: not the user's
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the previous handler is back


def test_a_plugin_whose_commands_raise_is_a_warning():
    import typer

    from ddprobe import hookimpl
    from ddprobe.cli.app import add_plugin_commands
    from ddprobe.plugins import load_plugins

    class Broken:
        @hookimpl
        def register_commands(self, app):
            raise RuntimeError("no commands today")

    class Fine:
        @hookimpl
        def register_commands(self, app):
            app.command("hello")(lambda: typer.echo("hello"))

    pm = load_plugins()
    pm.register(Fine(), name="fine-commands")
    pm.register(Broken(), name="broken-commands")
    try:
        target = typer.Typer()
        warnings = add_plugin_commands(target, pm)
    finally:
        pm.unregister(name="broken-commands")
        pm.unregister(name="fine-commands")
    assert warnings == ["plugin 'broken-commands': register_commands raised RuntimeError: no commands today"]
    assert [c.name for c in target.registered_commands] == ["hello"]
