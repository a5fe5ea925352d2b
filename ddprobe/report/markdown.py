"""report.md: a readable summary of a study for pull requests and notebooks."""

from __future__ import annotations

from pathlib import Path

from ..results import StudyResults
from .findings import markdown_findings
from .json_report import to_dict
from .tables import metric_matrices


def render(results: StudyResults) -> str:
    data = to_dict(results)
    status = {0: "all expectations held", 1: "an expectation failed", 3: "a probe or distiller failed"}
    lines = [f"# ddprobe study `{results.name}`", "",
             f"seed {results.seed} · {data['provenance'].get('device')} · torch {data['provenance'].get('torch')} · "
             f"{results.seconds:.1f} s · **{status.get(results.exit_code, '')}**", "", *markdown_findings(results),
             "## Distilled sets", "",
             "| set | distiller | ipc | images | seconds | status |", "|---|---|---|---|---|---|"]
    for name, d in data["distilled"].items():
        label = f"{name} (control)" if d["control"] else name
        secs = "" if d["seconds"] is None else f"{d['seconds']:.1f}"
        lines.append(f"| {label} | {d['distiller'] or d['source'] or ''} | {d['ipc']} | {d['images']} | {secs} | "
                     f"{d['status']}{': ' + d['error'] if d['error'] else ''} |")
    for p in data["probes"]:
        lines += ["", f"## {p['id']} ({p['kind']})", ""]
        if p["status"] != "ok":
            lines += [f"**error**: `{p['error']}`"]
            continue
        if p["summary"]:
            lines += [p["summary"], ""]
        matrices, rest = metric_matrices(p["metrics"])
        for m in matrices:
            lines += ["| | " + " | ".join(m.cols) + " |", "|---|" + "---|" * len(m.cols)]
            for r in m.rows:
                lines.append(f"| {r} | " + " | ".join(_fmt(m.cells.get((r, c))) for c in m.cols) + " |")
            lines.append("")
        if rest:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rest.items()] + [""]
        if p["checks"]:
            lines += ["| expectation | value | result |", "|---|---|---|"]
            for c in p["checks"]:
                mark = "pass" if c["passed"] else "**FAIL**"
                lines.append(f"| {c['metric']} {c['op']} {c['threshold']} | {_fmt(c['value'])} | {mark} |")
            lines.append("")
        for name, fig in p["figures"].items():
            lines.append(f"![{p['id']} {name}]({fig})")
    for err in data["errors"]:
        lines += ["", f"- error: {err}"]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class MarkdownReporter:
    name = "markdown"
    description = "report.md: tables of metrics and checks, figure links"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "report.md"
        path.write_text(render(results))
        return path
