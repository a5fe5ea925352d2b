"""Write every command's ``--help`` into docs/cli.md, so the docs cannot drift from the CLI.

    python -m ddprobe.cli.docs            # regenerate docs/cli.md
    python -m ddprobe.cli.docs --check    # exit 1 when docs/cli.md is stale (tests/test_cli_docs.py runs this)

Only ddprobe's own commands are documented (plugins may add more); help is rendered at a fixed width, without
colour, so the file is the same on every machine.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

WIDTH = 100
DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADER = """# Command-line reference

Every `ddprobe` command's `--help` (`-h` works too). This file is generated: after changing a command, run
`python -m ddprobe.cli.docs` to rewrite it; `tests/test_cli_docs.py` fails while it is stale.
"""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def commands() -> list[str]:
    """ddprobe's own commands, in ``ddprobe --help`` order."""
    from .app import app

    names = []
    for info in app.registered_commands:
        if (info.callback.__module__ or "").startswith("ddprobe.cli"):
            names.append(info.name or info.callback.__name__.strip("_").replace("_", "-"))
    return names


def render_help(args: list[str]) -> str:
    from typer import rich_utils
    from typer.testing import CliRunner

    from .app import app

    saved = rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM
    rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = WIDTH, False, None
    try:
        result = CliRunner().invoke(app, [*args, "--help"], prog_name="ddprobe", env={"COLUMNS": str(WIDTH)})
    finally:
        rich_utils.MAX_WIDTH, rich_utils.FORCE_TERMINAL, rich_utils.COLOR_SYSTEM = saved
    text = _ANSI.sub("", result.output)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n") + "\n"


def render() -> str:
    parts = [HEADER]
    for args in [[], *([c] for c in commands())]:
        title = " ".join(["ddprobe", *args])
        parts.append(f"## {title}\n\n```text\n{render_help(args)}```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOCS.exists() or DOCS.read_text() != text:
            print(f"{DOCS} is stale: run `python -m ddprobe.cli.docs` to regenerate it", file=sys.stderr)
            return 1
        return 0
    DOCS.write_text(text)
    print(f"wrote {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
