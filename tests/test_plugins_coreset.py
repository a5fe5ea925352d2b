"""The third-party path end to end: install plugins/ddprobe-coreset (into a temporary folder, found through its
entry point), list it, run a spec that uses it."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import os
import shutil
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


@pytest.fixture(scope="session")
def coreset_site(tmp_path_factory) -> Path:
    """plugins/ddprobe-coreset pip-installed (no dependencies: ddprobe is already here) into a temporary folder,
    never into the environment running the tests. Built from a copy, so the plugin's folder stays clean."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.fail("building the plugin offline needs setuptools: pip install -e '.[test]'")
    src = tmp_path_factory.mktemp("coreset-src") / "ddprobe-coreset"
    shutil.copytree(PLUGIN, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache"))
    target = tmp_path_factory.mktemp("coreset-site")
    purelib = Path(sysconfig.get_paths()["purelib"])
    before = sorted(os.listdir(purelib))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(target), str(src)], check=True, timeout=300)
    assert sorted(os.listdir(purelib)) == before  # nothing installed into the user's environment
    return target


@pytest.fixture(scope="session")
def coreset(coreset_site):
    sys.path.insert(0, str(coreset_site))
    importlib.invalidate_caches()
    sys.modules.pop("ddprobe_coreset", None)
    return importlib.import_module("ddprobe_coreset")


def environment(site_dir: Path, **extra: str) -> dict[str, str]:
    """This environment with the temporary install first on the path: its entry point is found there."""
    path = os.pathsep.join(p for p in (str(site_dir), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def ddprobe(*args: str, cwd: Path, site_dir: Path, load: str | None = "ddprobe-coreset") -> subprocess.CompletedProcess:
    env = environment(site_dir, DDPROBE_CACHE_DIR=str(cwd / "cache"))
    env.pop("DDPROBE_LOAD_PLUGINS", None)
    if load is not None:
        env["DDPROBE_LOAD_PLUGINS"] = load
    return subprocess.run([sys.executable, "-m", "ddprobe", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_plugins_lists_coreset_with_version_and_hooks(coreset, coreset_site, tmp_path):
    result = ddprobe("plugins", "--json", cwd=tmp_path, site_dir=coreset_site)
    assert result.returncode == 0, result.stderr
    plugins = {p["name"]: p for p in json.loads(result.stdout)}
    assert plugins["coreset"] == {"name": "coreset", "hooks": ["register_distillers"],
                                  "distribution": "ddprobe-coreset", "version": coreset.__version__}


def test_the_entry_point_found_is_the_temporary_install(coreset_site, tmp_path):
    code = ("import importlib.metadata as m; ep, = m.entry_points(group='ddprobe', name='coreset'); "
            "print(ep.dist.locate_file('')); print(ep.load().__file__)")
    result = subprocess.run([sys.executable, "-c", code], env=environment(coreset_site), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    dist_dir, module_file = result.stdout.split()
    assert Path(dist_dir) == coreset_site and Path(module_file).is_relative_to(coreset_site)


def test_load_plugins_allow_list_can_exclude_it(coreset, coreset_site, tmp_path):
    result = ddprobe("list", "distillers", cwd=tmp_path, site_dir=coreset_site, load="")
    assert result.returncode == 0, result.stderr
    assert "herding" not in result.stdout
    result = ddprobe("list", "distillers", cwd=tmp_path, site_dir=coreset_site,
                     load="coreset")  # the entry-point name works too
    assert "herding" in result.stdout and "(coreset)" in result.stdout


def test_spec_using_the_installed_plugin_runs(coreset, coreset_site, tmp_path):
    (tmp_path / "study.toml").write_text(SPEC)
    result = ddprobe("run", "study.toml", "--quiet", "--output", "out", cwd=tmp_path, site_dir=coreset_site)
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
def test_the_plugins_own_test_suite_passes(coreset_site):
    """The plugin's tests use ddprobe.testing's fixtures through the pytest11 entry point alone."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(PLUGIN / "tests")],
                            cwd=PLUGIN, env=environment(coreset_site), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
