"""Shared fixtures: an isolated cache, the digits data, and a small study context for probe tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys._called_from_test = True  # entry-point plugins load only when a test asks for them

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    # Subprocesses a test starts (ddprobe run, worker pools started with spawn) run one thread each unless the
    # caller chose otherwise: several of them share the cores, and oversubscribed OpenMP threads spin.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("DDPROBE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _restore_plugins():
    """Unregister plugins a test registered (local plugin files, test plugins) so tests stay independent."""
    from ddprobe import registry
    from ddprobe.plugins import load_plugins

    pm = load_plugins()
    before = {pm.get_name(p) for p in pm.get_plugins()}
    yield
    for plugin in list(pm.get_plugins()):
        if pm.get_name(plugin) not in before:
            pm.unregister(plugin)
    registry.invalidate()


@pytest.fixture(scope="session")
def digits():
    """The full digits RealData (1437 train / 360 test, 1x8x8)."""
    from ddprobe import registry

    plugin = registry.get_dataset("digits")
    return plugin.load(plugin.Options(), REPO)


@pytest.fixture
def make_ctx(digits, tmp_path):
    """Build a StudyContext on digits: ``make_ctx(sets={...}, models={...}, recipe=...)``."""
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import ModelSpec, StudyContext
    from ddprobe.training import TrainRecipe

    def build(sets=None, models=None, recipe=None, pretrain=None, seed=0, real=None):
        real = real or digits
        if models is None:
            models = {"convnet": ("convnet", {"width": 16, "depth": 2})}
        specs = {}
        for name, (arch, opts) in models.items():
            plugin = registry.get_model(arch)
            specs[name] = ModelSpec(name, arch, plugin.Options(**opts), plugin)
        return StudyContext(
            seed, real, specs, recipe or TrainRecipe(steps=100), Cache(tmp_path / "cache"), "cpu",
            data_key={"dataset": "digits"}, distilled=dict(sets or {}),
            pretrain_recipe=pretrain or TrainRecipe(epochs=5, batch_size=128, steps=None),
            output_dir=tmp_path / "out",
        )

    return build


@pytest.fixture
def random_set(digits):
    """A random real set at 2 images per class, made by the built-in random distiller."""
    from ddprobe import registry
    from ddprobe.cache import Cache
    from ddprobe.context import DistillContext
    from ddprobe.training import TrainRecipe

    def make(ipc=2, seed=0):
        plugin = registry.get_distiller("random")
        ctx = DistillContext(seed, digits, {}, TrainRecipe(), Cache(), "cpu")
        ds = plugin.distill(digits, ipc, plugin.Options(), ctx)
        ds.manifest.name = f"random{ipc}"
        ds.manifest.input_space = digits.space
        return ds

    return make


@pytest.fixture(scope="module")
def ray_local(request):
    """One local Ray instance (2 CPUs, no dashboard, localhost only) for a test module; left running if it was
    already up. The test module's own functions are sent to workers by value (test modules are not importable
    there)."""
    ray = pytest.importorskip("ray")
    ray.cloudpickle.register_pickle_by_value(request.module)
    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
