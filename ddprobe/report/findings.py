"""The Findings section that leads every report: one row per finding and set, beside the control's verdict."""

from __future__ import annotations

import html
from typing import Any

from ..results import StudyResults

COLUMNS = ("finding", "set", "effect", "95% CI", "n", "verdict", "control")
VERDICT_COLOURS = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}


def _num(v: Any) -> str:
    """A signed effect in the shared number format (report.numbers): ``+0.107``, ``-3``, ``0``."""
    from .numbers import fmt_delta

    return "–" if v is None else fmt_delta(v)


def rows(results: StudyResults) -> list[dict[str, str]]:
    """Findings as display strings; controls' own rows come after the sets they stand beside."""
    out = []
    findings = results.findings
    for f in sorted(findings, key=lambda f: (f.probe, f.id, f.control)):
        ci = "–" if f.ci is None else f"[{_num(f.ci[0])}, {_num(f.ci[1])}]"
        control = "(is the control)" if f.control else (
            f"{f.control_verdict} ({f.control_set})" if f.control_verdict else
            (f"– ({f.control_set})" if f.control_set else "no control"))
        out.append({"finding": f.id, "probe": f.probe, "set": f.set, "claim": f.claim, "effect": _num(f.effect),
                    "95% CI": ci, "n": str(f.n), "unit": f.unit_of_n, "verdict": f.verdict, "control": control,
                    "why": f.reason or "", "statistic": f.statistic})
    return out


def print_findings(results: StudyResults, console: Any) -> None:
    """One small table per finding (its claim above, reasons below), so it reads at 80 columns."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    found = rows(results)
    if not found:
        return
    console.print("[bold]Findings[/bold]")
    by_finding: dict[str, list[dict[str, str]]] = {}
    for r in found:
        by_finding.setdefault(r["finding"], []).append(r)
    for fid, group in by_finding.items():
        first = group[0]
        probe = f" (probe {escape(first['probe'])})" if first["probe"] != fid else ""
        console.print(f"[bold]{escape(fid)}[/bold]{probe}: {escape(first['claim'])}")
        console.print(f"  [dim]{escape(first['statistic'])}; n: {escape(first['unit'])}[/dim]")
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
        for col in ("set", "effect", "95% CI", "n", "verdict", "control"):
            table.add_column(col, justify="right" if col in ("effect", "95% CI", "n") else "left",
                             no_wrap=col != "set")
        for r in group:
            colour = VERDICT_COLOURS.get(r["verdict"], "white")
            control = "(control)" if r["control"].startswith("(") else r["control"].split(" (")[0]
            table.add_row(escape(r["set"]), r["effect"], r["95% CI"], r["n"],
                          f"[{colour}]{r['verdict']}[/{colour}]", escape(control))
        console.print(table)
        for r in group:
            if r["why"]:
                console.print(f"  {escape(r['set'])}: {escape(r['why'])}", style="dim")


def markdown_findings(results: StudyResults) -> list[str]:
    found = rows(results)
    if not found:
        return []
    lines = ["## Findings", "", "| finding | set | effect | 95% CI | n | verdict | control | why |",
             "|---|---|---|---|---|---|---|---|"]
    claims: dict[str, str] = {}
    for r in found:
        claims.setdefault(r["finding"], f"{r['claim']} ({r['statistic']})")
        lines.append(f"| {r['finding']} | {r['set']} | {r['effect']} | {r['95% CI']} | {r['n']} {r['unit']} | "
                     f"**{r['verdict']}** | {r['control']} | {r['why'].replace('|', '/')} |")
    lines.append("")
    lines += [f"- **{fid}**: {claim}" for fid, claim in claims.items()]
    return lines + [""]


def html_findings(results: StudyResults) -> str:
    found = rows(results)
    if not found:
        return ""
    e = html.escape
    css = {"holds": "ok", "does not hold": "fail", "inconclusive": "warn"}
    parts = ["<h2 id='findings'>Findings</h2><table><tr>" +
             "".join(f"<th>{c}</th>" for c in (*COLUMNS, "why")) + "</tr>"]
    claims: dict[str, str] = {}
    for r in found:
        claims.setdefault(r["finding"], f"{r['claim']} ({r['statistic']})")
        parts.append(f"<tr><td title='{e(r['claim'])}'>{e(r['finding'])}</td><td>{e(r['set'])}</td>"
                     f"<td>{e(r['effect'])}</td><td>{e(r['95% CI'])}</td><td>{e(r['n'] + ' ' + r['unit'])}</td>"
                     f"<td class='{css.get(r['verdict'], '')}'>{e(r['verdict'])}</td><td>{e(r['control'])}</td>"
                     f"<td style='text-align:left'>{e(r['why'])}</td></tr>")
    parts.append("</table><ul>" + "".join(f"<li><b>{e(fid)}</b>: {e(c)}</li>" for fid, c in claims.items()) +
                 "</ul>")
    return "\n".join(parts)
