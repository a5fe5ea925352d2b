"""Built-in reporters: json, markdown, html, junit."""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_reporters(register):
    from ..report.html import HtmlReporter
    from ..report.json_report import JsonReporter
    from ..report.junit import JunitReporter
    from ..report.markdown import MarkdownReporter

    for cls in (JsonReporter, MarkdownReporter, HtmlReporter, JunitReporter):
        register(cls())
