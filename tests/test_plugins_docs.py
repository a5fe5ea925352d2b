"""The plugin docs show code from tested files, and stay in step with it.

A block in docs/plugins/*.md preceded by ``<!-- include: PATH#NAME -->`` must equal the lines between
``# -- start NAME --`` and ``# -- end NAME --`` in PATH (dedented). Regenerate after editing the source with
``DDPROBE_UPDATE_DOCS=1 pytest tests/test_plugins_docs.py``. docs/ci.md's workflow must only call real
``ddprobe`` commands on files that exist.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
INCLUDE = re.compile(r"<!-- include: (?P<path>[^#\s]+)#(?P<name>[\w-]+) -->\n```(?P<lang>\w*)\n(?P<body>.*?)```",
                     re.S)
DOCS = sorted((REPO / "docs" / "plugins").glob("*.md"))


def snippet(path: str, name: str) -> str:
    lines = (REPO / path).read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == f"# -- start {name} --"]
    ends = [i for i, line in enumerate(lines) if line.strip() == f"# -- end {name} --"]
    assert len(starts) == 1 and len(ends) == 1 and starts[0] < ends[0], f"{path}: markers for {name!r}"
    return textwrap.dedent("\n".join(lines[starts[0] + 1 : ends[0]])).strip("\n") + "\n"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_included_code_matches_its_source(doc):
    text = doc.read_text()
    if os.environ.get("DDPROBE_UPDATE_DOCS"):
        text = INCLUDE.sub(lambda m: f"<!-- include: {m['path']}#{m['name']} -->\n```{m['lang']}\n"
                                     f"{snippet(m['path'], m['name'])}```", text)
        doc.write_text(text)
    for m in INCLUDE.finditer(text):
        assert m["body"] == snippet(m["path"], m["name"]), (
            f"{doc.name}: the block from {m['path']}#{m['name']} is out of date; "
            "run DDPROBE_UPDATE_DOCS=1 pytest tests/test_plugins_docs.py")


def test_writing_guide_includes_the_coreset_plugin():
    text = (REPO / "docs" / "plugins" / "writing.md").read_text()
    included = {m["name"] for m in INCLUDE.finditer(text)}
    assert {"entry-point", "register", "options", "distill", "features", "herding", "kcenter", "conformance",
            "plan", "one-off"} <= included


def test_ci_workflow_uses_real_commands_and_files():
    from ddprobe.cli import app

    text = (REPO / "docs" / "ci.md").read_text()
    workflow = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert workflow, "docs/ci.md shows a workflow"
    runs = [line.split("run:", 1)[1] for line in workflow[1].splitlines() if line.strip().startswith("run:")]
    calls = [c for line in runs for c in re.findall(r"\bddprobe ([a-z]+)((?: [^\s|&;#]+)*)", line)]
    assert {c for c, _ in calls} >= {"plan", "run", "compare"}
    for command, args in calls:
        assert CliRunner().invoke(app, [command, "--help"]).exit_code == 0, command
        for arg in args.split():
            if arg.startswith("specs/"):
                assert (REPO / arg).exists(), arg
    assert "junit.xml" in workflow[1]
