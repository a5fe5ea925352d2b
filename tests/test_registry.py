"""The plugin core: test plugins register like built-ins; duplicates, broken plugins and allow-lists."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from ddprobe import ProbeResult, hookimpl, registry
from ddprobe.errors import PluginError
from ddprobe.plugins import DEFAULT_PLUGINS, get_plugins, load_plugins


class EchoProbe:
    name = "echo"
    description = "returns its option as a metric"

    class Options(BaseModel):
        value: float = 1.0

    def run(self, ctx, options):
        return ProbeResult(metrics={"value": options.value})


class EchoPlugin:
    __name__ = "echo_plugin"

    @hookimpl
    def register_probes(self, register):
        register(EchoProbe())


def register(plugin, name):
    pm = load_plugins()
    pm.register(plugin, name=name)
    registry.invalidate()
    return pm


def test_builtins_are_default_plugins():
    pm = load_plugins()
    for name in DEFAULT_PLUGINS:
        assert pm.get_plugin(name) is not None
    assert registry.owner_of("probe", "recognition") == "ddprobe.builtin.probes"
    assert not {p["name"] for p in get_plugins()} & set(DEFAULT_PLUGINS)
    names = {p["name"] for p in get_plugins(include_builtin=True)}
    assert set(DEFAULT_PLUGINS) <= names


def test_test_plugin_registers_a_probe_usable_in_a_spec(tmp_path):
    from ddprobe.spec import load_spec

    register(EchoPlugin(), "echo_plugin")
    assert registry.get_probe("echo").description == "returns its option as a metric"
    assert registry.owner_of("probe", "echo") == "echo_plugin"
    spec = tmp_path / "s.toml"
    spec.write_text('[[probe]]\nkind = "echo"\nvalue = 2.5\n')
    assert load_spec(spec).probes[0].options.value == 2.5
    info = next(p for p in get_plugins() if p["name"] == "echo_plugin")
    assert info["hooks"] == ["register_probes"]


def test_duplicate_names_name_both_registrants():
    class Twin:
        __name__ = "twin"

        @hookimpl
        def register_probes(self, register):
            register(EchoProbe())

    register(EchoPlugin(), "echo_plugin")
    register(Twin(), "twin")
    with pytest.raises(PluginError, match="probe name 'echo' is registered twice: by plugin '.*' and by plugin"):
        registry.get_all("probe")


@pytest.mark.parametrize("broken, message", [
    (type("NoName", (), {"description": "x", "Options": BaseModel, "run": lambda s, c, o: None}), "no string 'name'"),
    (type("NoOpts", (), {"name": "n", "description": "x", "run": lambda s, c, o: None}), "needs an 'Options'"),
    (type("NoRun", (), {"name": "n", "description": "x", "Options": BaseModel}), "has no 'run' method"),
])
def test_invalid_registrations_are_explained(broken, message):
    class Bad:
        __name__ = "bad"

        @hookimpl
        def register_probes(self, register):
            register(broken())

    register(Bad(), "bad")
    with pytest.raises(PluginError, match=message) as info:
        registry.get_all("probe")
    assert "registered by plugin 'bad'" in str(info.value)


def test_unknown_name_suggests():
    with pytest.raises(KeyError, match="did you mean 'recognition'"):
        registry.get_probe("recogniton")


def test_misspelled_hook_is_caught():
    class Typo:
        __name__ = "typo"

        @hookimpl
        def register_probe(self, register):  # missing the final s
            pass

    pm = load_plugins()
    pm.register(Typo(), name="typo")
    with pytest.raises(Exception, match="register_probe"):
        pm.check_pending()


class FakeEntryPoint:
    group = "ddprobe"

    def __init__(self, name, target):
        self.name, self._target = name, target

    def load(self):
        if isinstance(self._target, Exception):
            raise self._target
        return self._target


class FakeDist:
    def __init__(self, name, eps):
        self.metadata = {"Name": name}
        self.entry_points = eps
        self.version = "9.9"

    @property
    def project_name(self):
        return self.metadata["Name"]


def _load_with(monkeypatch, dists, allow=None):
    import ddprobe.plugins as plugins

    monkeypatch.setattr(plugins.importlib.metadata, "distributions", lambda: dists)
    if allow is None:
        monkeypatch.delenv("DDPROBE_LOAD_PLUGINS", raising=False)
    else:
        monkeypatch.setenv("DDPROBE_LOAD_PLUGINS", allow)
    plugins._load_entrypoints()


def test_plugin_that_fails_to_import_is_a_warning_naming_it(monkeypatch):
    dists = [FakeDist("ddprobe-broken", [FakeEntryPoint("broken", ImportError("no module named nothere"))])]
    with pytest.warns(UserWarning, match="'broken' from distribution 'ddprobe-broken' failed to load"):
        _load_with(monkeypatch, dists)
    assert load_plugins().get_plugin("broken") is None


def test_load_plugins_allow_list(monkeypatch):
    dists = [FakeDist("ddprobe-echo", [FakeEntryPoint("echo_plugin", EchoPlugin())]),
             FakeDist("ddprobe-other", [FakeEntryPoint("other", ImportError("must not be loaded"))])]
    _load_with(monkeypatch, dists, allow="ddprobe-echo")
    pm = load_plugins()
    assert pm.get_plugin("echo_plugin") is not None and pm.get_plugin("other") is None
    registry.invalidate()
    assert "echo" in registry.get_all("probe")


def test_trace_plugins_prints_hook_calls(monkeypatch, capsys):
    import ddprobe.plugins as plugins

    undo = plugins._trace_hooks()
    try:
        registry.invalidate()
        load_plugins().hook.register_reporters(register=lambda obj: None)
    finally:
        undo()
    assert "[ddprobe] hook register_reporters(register)" in capsys.readouterr().err
