"""Typed lookups over what plugins registered: ``get_probe("recognition")`` with "did you mean" errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import PluginError, suggest
from .plugins import load_plugins


@dataclass(frozen=True)
class Kind:
    hook: str
    method: str
    needs_options: bool = True
    is_class: bool = False  # registered as a class (instantiated per use with its options), not an instance


KINDS: dict[str, Kind] = {
    "dataset": Kind("register_datasets", "load"),
    "model": Kind("register_models", "build"),
    "distiller": Kind("register_distillers", "distill"),
    "probe": Kind("register_probes", "run"),
    "reporter": Kind("register_reporters", "write", needs_options=False),
    "importer": Kind("register_importers", "load", needs_options=False),
    "influence_backend": Kind("register_influence_backends", "compute", is_class=True),
}

_cache: dict[str, dict[str, Any]] = {}
_owners: dict[str, dict[str, str]] = {}


def invalidate() -> None:
    """Forget collected registrations (after a plugin was registered or unregistered)."""
    _cache.clear()
    _owners.clear()


def _check(kind: str, obj: Any, owner: str) -> None:
    spec = KINDS[kind]
    what = f"{kind} {getattr(obj, 'name', obj)!r} registered by plugin {owner!r}"
    if not isinstance(getattr(obj, "name", None), str) or not obj.name:
        raise PluginError(f"{what} has no string 'name'")
    if not isinstance(getattr(obj, "description", None), str):
        raise PluginError(f"{what} has no one-line 'description'")
    if spec.is_class and not isinstance(obj, type):
        raise PluginError(f"{what} must be registered as a class (it is instantiated with its options), "
                          f"not as a {type(obj).__name__} instance")
    if not callable(getattr(obj, spec.method, None)):
        raise PluginError(f"{what} has no '{spec.method}' method")
    if spec.needs_options:
        from pydantic import BaseModel

        options = getattr(obj, "Options", None)
        if not (isinstance(options, type) and issubclass(options, BaseModel)):
            raise PluginError(f"{what} needs an 'Options' pydantic model (use an empty one if it takes none)")


def _collect(kind: str) -> dict[str, Any]:
    if kind in _cache:
        return _cache[kind]
    pm = load_plugins()
    found: dict[str, Any] = {}
    owners: dict[str, str] = {}
    caller = getattr(pm.hook, KINDS[kind].hook)
    # Call implementations one by one (last registered first, as pluggy does) to know who registered what.
    for impl in reversed(caller.get_hookimpls()):
        owner = impl.plugin_name

        def register(obj: Any, _owner: str = owner) -> None:
            _check(kind, obj, _owner)
            if obj.name in found:
                raise PluginError(
                    f"{kind} name {obj.name!r} is registered twice: by plugin {owners[obj.name]!r} "
                    f"and by plugin {_owner!r}; rename one of them or block a plugin with DDPROBE_LOAD_PLUGINS"
                )
            found[obj.name] = obj
            owners[obj.name] = _owner

        try:
            impl.function(register=register)
        except PluginError:
            raise
        except Exception as exc:  # a plugin whose registration hook breaks is named, not a traceback
            raise PluginError(f"plugin {owner!r}: {KINDS[kind].hook} raised {type(exc).__name__}: {exc}") from exc
    _cache[kind] = found
    _owners[kind] = owners
    return found


def check_all() -> None:
    """Collect every kind once; raises :class:`PluginError` when a plugin registered something invalid or taken."""
    for kind in KINDS:
        _collect(kind)


def get_all(kind: str) -> dict[str, Any]:
    """Every registered object of a kind, by name."""
    return dict(_collect(kind))


def owner_of(kind: str, name: str) -> str:
    _collect(kind)
    return _owners[kind][name]


def get(kind: str, name: str) -> Any:
    found = _collect(kind)
    if name not in found:
        raise KeyError(f"unknown {kind} {name!r}: {suggest(name, found)}")
    return found[name]


def get_dataset(name: str) -> Any:
    return get("dataset", name)


def get_model(name: str) -> Any:
    return get("model", name)


def get_distiller(name: str) -> Any:
    return get("distiller", name)


def get_probe(name: str) -> Any:
    return get("probe", name)


def get_reporter(name: str) -> Any:
    return get("reporter", name)


def get_importer(name: str) -> Any:
    return get("importer", name)
