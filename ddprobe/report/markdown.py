"""report.md: a readable summary of a study for pull requests and notebooks (same order as report.html)."""

from __future__ import annotations

from pathlib import Path

from ..results import StudyResults
from .figures import read_description
from .findings import markdown_findings
from .json_report import to_dict
from .numbers import fmt, fmt_seconds, plural
from .tables import metric_matrices


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render(results: StudyResults) -> str:
    data = to_dict(results)
    out = results.output_dir
    checks = [c for p in data["probes"] for c in p["checks"]]
    failed = [(p["id"], c) for p in data["probes"] for c in p["checks"] if not c["passed"]]
    lines = [f"# ddprobe study `{results.name}`", "",
             f"**Result: {results.status}** (exit code {results.exit_code}) · {plural(len(checks), 'expectation')}, "
             f"{len(failed)} failed · {plural(len(data['probes']), 'probe')} · {fmt_seconds(results.seconds)}", ""]
    for pid, c in failed:
        got = f"got {fmt(c['value'])}" if c["value"] is not None else (c.get("message") or "no value")
        lines.append(f"- FAILED {pid}: `{c['metric']} {c['op']} {fmt(c['threshold'])}` — {got}")
    for p in data["probes"]:
        if p["status"] != "ok":
            lines.append(f"- probe {p['id']} {'failed' if p['status'] == 'error' else p['status']}: `{p['error']}`")
    lines += [f"- error: {err}" for err in data["errors"]]
    lines += [f"- warning: {warning}" for warning in data.get("warnings", [])]
    lines += ["", f"seed {results.seed} · {data['provenance'].get('device')} · torch "
                  f"{data['provenance'].get('torch')}", "", *markdown_findings(results), "## Distilled sets", "",
              "| set | made by | images per class | images | time | status |", "|---|---|---|---|---|---|"]
    for name, d in data["distilled"].items():
        label = f"{name} (control)" if d["control"] else name
        lines.append(f"| {label} | {d['distiller'] or d['source'] or ''} | {fmt(d['ipc'])} | {fmt(d['images'])} | "
                     f"{fmt_seconds(d['seconds'])} | {d['status']}{': ' + _cell(d['error']) if d['error'] else ''} |")
    lines.append("")
    for name, d in data["distilled"].items():
        if d.get("figure"):
            lines.append(f"![images of {name}]({d['figure']})")
    sets = list(data["distilled"])
    for p in data["probes"]:
        lines += ["", f"## {p['id']} ({p['kind']})", ""]
        if p.get("cached"):
            took = f"cached: loaded in {fmt_seconds(p['seconds'])}"
            if p.get("computed_seconds") is not None:
                took += f", computed in {fmt_seconds(p['computed_seconds'])} by an earlier run"
        else:
            took = f"computed in {fmt_seconds(p['seconds'])}"
        lines += [f"_{took}_", ""]
        if p["status"] != "ok":
            lines += [f"**{p['status']}**: `{p['error']}`"]
            continue
        if p["summary"]:
            lines += [p["summary"], ""]
        if p["checks"]:
            lines += ["| expectation | value | result |", "|---|---|---|"]
            for c in p["checks"]:
                mark = "pass" if c["passed"] else "**FAIL**"
                value = fmt(c["value"]) if c["value"] is not None else _cell(c.get("message") or "no value")
                lines.append(f"| {c['metric']} {c['op']} {fmt(c['threshold'])} | {value} | {mark} |")
            lines.append("")
        matrices, rest = metric_matrices(p["metrics"], sets)
        for m in matrices:
            lines += ["| | " + " | ".join(m.cols) + " |", "|---|" + "---|" * len(m.cols)]
            for r in m.rows:
                lines.append(f"| {r} | " + " | ".join(fmt(m.cells.get((r, c))) for c in m.cols) + " |")
            lines.append("")
        if rest:
            lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {fmt(v)} |" for k, v in rest.items()] + [""]
        for name, fig in p["figures"].items():
            desc = read_description(out / fig) or {}
            lines += [f"![{p['id']} {name}]({fig})", ""]
            if desc.get("caption"):
                lines += [f"_{desc['caption']}_", ""]
    return "\n".join(lines) + "\n"


class MarkdownReporter:
    name = "markdown"
    description = "report.md: tables of metrics and checks, figure links"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "report.md"
        path.write_text(render(results))
        return path
