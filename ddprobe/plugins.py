"""The plugin manager: default plugins, entry points, DDPROBE_LOAD_PLUGINS and DDPROBE_TRACE_PLUGINS."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pluggy

from . import hookspecs

DEFAULT_PLUGINS = (
    "ddprobe.builtin.datasets",
    "ddprobe.builtin.models",
    "ddprobe.builtin.importers",
    "ddprobe.builtin.distillers",
    "ddprobe.builtin.probes",
    "ddprobe.builtin.reporters",
    "ddprobe.builtin.influence_backends",
)

pm = pluggy.PluginManager("ddprobe")
pm.add_hookspecs(hookspecs)

_loaded = False


def _trace_hooks():
    """Print every hook call to stderr (DDPROBE_TRACE_PLUGINS=1). Returns a function that stops tracing."""
    def before(hook_name, hook_impls, kwargs):
        names = ", ".join(impl.plugin_name for impl in hook_impls)
        print(f"[ddprobe] hook {hook_name}({', '.join(kwargs)}) -> [{names}]", file=sys.stderr)

    def after(outcome, hook_name, hook_impls, kwargs):
        exc = outcome.exception
        if exc is not None:
            print(f"[ddprobe] hook {hook_name} raised {exc!r}", file=sys.stderr)

    return pm.add_hookcall_monitoring(before, after)


def _load_entrypoints() -> None:
    allowed = os.environ.get("DDPROBE_LOAD_PLUGINS")
    allow = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip()}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group != "ddprobe":
                continue
            dist_name = dist.metadata["Name"]
            if allow is not None and dist_name not in allow and ep.name not in allow:
                continue
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin must not take ddprobe down
                warnings.warn(
                    f"ddprobe plugin {ep.name!r} from distribution {dist_name!r} failed to load: {exc!r}",
                    stacklevel=2,
                )
                continue
            pm.register(plugin, name=ep.name)
            pm._plugin_distinfo.append((plugin, pluggy._manager.DistFacade(dist)))  # type: ignore[attr-defined]


def load_plugins() -> pluggy.PluginManager:
    """Load entry-point plugins (unless running under the test suite) and then the default plugins, once."""
    global _loaded
    if _loaded:
        return pm
    _loaded = True
    if os.environ.get("DDPROBE_TRACE_PLUGINS"):
        _trace_hooks()
    if not getattr(sys, "_called_from_test", False) or os.environ.get("DDPROBE_LOAD_PLUGINS"):
        _load_entrypoints()
    for name in DEFAULT_PLUGINS:
        if pm.get_plugin(name) is None:
            pm.register(importlib.import_module(name), name=name)
    pm.check_pending()
    return pm


def load_plugin_file(path: str | Path) -> object:
    """Load a one-off plugin from a ``.py`` file (``[study] plugins = ["./my_probe.py"]``)."""
    path = Path(path).resolve()
    name = f"file:{path}"
    existing = pm.get_plugin(name)
    if existing is not None:
        return existing
    if not path.is_file():
        raise FileNotFoundError(path)
    spec = importlib.util.spec_from_file_location(f"ddprobe_local_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pm.register(module, name=name)
    pm.check_pending()
    from . import registry

    registry.invalidate()
    return module


def unload_plugin_file(path: str | Path) -> None:
    """Unregister a plugin loaded by :func:`load_plugin_file` (one that was refused, e.g. for a name clash)."""
    name = f"file:{Path(path).resolve()}"
    if pm.get_plugin(name) is not None:
        pm.unregister(name=name)
    from . import registry

    registry.invalidate()


def get_plugins(include_builtin: bool = False) -> list[dict]:
    """Describe loaded plugins: name, hooks implemented, and distribution version where known."""
    load_plugins()
    versions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for plugin in pm.get_plugins():
        name = pm.get_name(plugin)
        if not include_builtin and name in DEFAULT_PLUGINS:
            continue
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        info = {"name": name, "hooks": hooks}
        dist = versions.get(id(plugin))
        if dist is not None:
            info["distribution"] = dist.project_name
            info["version"] = dist.version
        out.append(info)
    return sorted(out, key=lambda p: p["name"])
