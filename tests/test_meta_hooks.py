"""Meta-tests: every plugin hook has a test named ``test_hook_<name>`` and a heading with its exact signature
in docs/plugins/hooks.md (datasette's practice), so a new hook cannot ship undocumented or untested."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ddprobe import hookspecs
from ddprobe.plugins import pm

REPO = Path(__file__).resolve().parents[1]
HOOKS = sorted(name for name in dir(pm.hook) if not name.startswith("_"))


def test_hooks_are_the_hookspecs():
    specs = sorted(name for name, fn in vars(hookspecs).items() if hasattr(fn, "ddprobe_spec"))
    assert HOOKS == specs and HOOKS


@pytest.fixture(scope="module")
def test_functions() -> set[str]:
    names = set()
    for path in (REPO / "tests").glob("test_*.py"):
        names.update(re.findall(r"^def (test_hook_\w+)\(", path.read_text(), flags=re.M))
    return names


@pytest.fixture(scope="module")
def headings() -> set[str]:
    text = (REPO / "docs" / "plugins" / "hooks.md").read_text()
    return set(re.findall(r"^## (.+?)\s*$", text, flags=re.M))


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hook_has_a_test(hook, test_functions):
    assert f"test_hook_{hook}" in test_functions, f"write a test named test_hook_{hook} (tests/test_plugins_hooks.py)"


@pytest.mark.parametrize("hook", HOOKS)
def test_plugin_hook_is_documented(hook, headings):
    signature = f"{hook}({', '.join(getattr(pm.hook, hook).spec.argnames)})"
    assert signature in headings, f"docs/plugins/hooks.md needs a heading '## {signature}'"


def test_no_heading_for_a_hook_that_does_not_exist(headings):
    documented = {h.split("(")[0] for h in headings if "(" in h}
    assert documented <= set(HOOKS), f"documented but not hooks: {sorted(documented - set(HOOKS))}"
