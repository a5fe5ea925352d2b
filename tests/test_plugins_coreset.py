"""The third-party path end to end: install plugins/ddprobe-coreset, list it, run a spec that uses it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugins" / "ddprobe-coreset"

SPEC = """
[study]
name = "coreset-e2e"
device = "cpu"
control = false
cache_dir = "cache"

[data]
dataset = "digits"
train_per_class = 30

[train]
steps = 30

[models]
convnet = { arch = "convnet", width = 8, depth = 1 }

[distilled.herding]
distiller = "herding"
ipc = 2
epochs = 2

[distilled.kcenter]
distiller = "kcenter"
ipc = 2
space = "pixels"

[[probe]]
kind = "evaluate"
seeds = 1
expect = { "herding/convnet" = ">= 0.15", "kcenter/convnet" = ">= 0.15" }

[report]
formats = ["json"]
"""


def install_coreset() -> None:
    """pip-install the plugin (editable, no dependencies: ddprobe is already here) unless it is installed."""
    try:
        importlib.metadata.distribution("ddprobe-coreset")
    except importlib.metadata.PackageNotFoundError:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(PLUGIN)]
        if importlib.util.find_spec("setuptools") is not None:
            cmd.insert(-2, "--no-build-isolation")  # offline-friendly; otherwise pip fetches setuptools
        subprocess.run(cmd, check=True)
        site.addsitedir(sysconfig.get_paths()["purelib"])  # pick up the new editable-install .pth
        importlib.invalidate_caches()


@pytest.fixture(scope="session")
def coreset():
    install_coreset()
    return importlib.import_module("ddprobe_coreset")


def ddprobe(*args: str, cwd: Path, load: str | None = "ddprobe-coreset") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DDPROBE_CACHE_DIR": str(cwd / "cache")}
    env.pop("DDPROBE_LOAD_PLUGINS", None)
    if load is not None:
        env["DDPROBE_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "ddprobe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugins_lists_coreset_with_version_and_hooks(coreset, tmp_path):
    result = ddprobe("plugins", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["coreset"] == {"name": "coreset", "hooks": ["register_distillers"],
                                  "distribution": "ddprobe-coreset", "version": coreset.__version__}


def test_load_plugins_allow_list_can_exclude_it(coreset, tmp_path):
    result = ddprobe("list", "distillers", cwd=tmp_path, load="")
    assert result.returncode == 0, result.stderr
    assert "herding" not in result.stdout
    result = ddprobe("list", "distillers", cwd=tmp_path, load="coreset")  # the entry-point name works too
    assert "herding" in result.stdout and "(coreset)" in result.stdout


def test_spec_using_the_installed_plugin_runs(coreset, tmp_path):
    (tmp_path / "study.toml").write_text(SPEC)
    result = ddprobe("run", "study.toml", "--quiet", "--output", "out", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {n: (d["distiller"], d["images"]) for n, d in report["distilled"].items()} == {
        "herding": ("herding", 20), "kcenter": ("kcenter", 20)}
    assert report["provenance"]["plugins"]["coreset"] == coreset.__version__
    assert all(c["passed"] for c in report["probes"][0]["checks"])


def test_installed_plugin_passes_conformance_through_the_registry(coreset, ddprobe_register, ddprobe_real,
                                                                  tmp_path):
    from ddprobe import registry
    from ddprobe.testing import check_distiller

    ddprobe_register(coreset, name="coreset")
    for name in ("herding", "kcenter"):
        assert registry.owner_of("distiller", name) == "coreset"
        check_distiller(registry.get_distiller(name), real=ddprobe_real, directory=tmp_path / name)


def test_ddprobe_testing_is_a_pytest_plugin(request):
    """Installing ddprobe registers ddprobe.testing with pytest (entry point pytest11): no conftest needed."""
    import ddprobe.testing

    assert request.config.pluginmanager.get_plugin("ddprobe") is ddprobe.testing
    assert request.getfixturevalue("ddprobe_real").num_classes == 10


@pytest.mark.slow
def test_the_plugins_own_test_suite_passes(coreset):
    """The plugin's tests use ddprobe.testing's fixtures through the pytest11 entry point alone."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                            cwd=PLUGIN, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
