"""docs/cli.md is every command's --help, generated; this fails when a command changed and the docs did not."""

from __future__ import annotations

from ddprobe.cli import docs


def test_cli_reference_is_up_to_date():
    assert docs.DOCS.exists(), "docs/cli.md is missing: run `python -m ddprobe.cli.docs`"
    expected = docs.render()
    assert docs.DOCS.read_text() == expected, "docs/cli.md is stale: run `python -m ddprobe.cli.docs`"


def test_cli_reference_covers_every_builtin_command():
    text = docs.DOCS.read_text()
    for name in docs.commands():
        assert f"## ddprobe {name}\n" in text
    assert {"run", "compare", "init", "open", "plugins"} <= set(docs.commands())


def test_check_mode_reports_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(docs, "DOCS", tmp_path / "cli.md")
    assert docs.main(["--check"]) == 1
    assert "python -m ddprobe.cli.docs" in capsys.readouterr().err
    assert docs.main([]) == 0 and docs.main(["--check"]) == 0
