"""The Findings section that leads every report: one row per finding and set, beside the control's verdict."""

from __future__ import annotations

import html
from typing import Any

from ..results import StudyResults

COLUMNS = ("finding", "set", "claim", "effect", "95% CI", "n", "verdict", "control", "why")
VERDICT_COLOURS = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}


def _num(v: Any) -> str:
    return "–" if v is None else f"{v:+.3g}"


def rows(results: StudyResults) -> list[dict[str, str]]:
    """Findings as display strings; controls' own rows come after the sets they stand beside."""
    out = []
    findings = results.findings
    for f in sorted(findings, key=lambda f: (f.probe, f.id, f.control)):
        ci = "–" if f.ci is None else f"[{f.ci[0]:+.3g}, {f.ci[1]:+.3g}]"
        control = "" if f.control else (f"{f.control_set}: {f.control_verdict}" if f.control_verdict else
                                        (f"{f.control_set}: –" if f.control_set else "no control"))
        out.append({"finding": f.id, "set": f.set + (" (control)" if f.control else ""), "claim": f.claim,
                    "effect": _num(f.effect), "95% CI": ci, "n": f"{f.n} {f.unit_of_n}", "verdict": f.verdict,
                    "control": control, "why": f.reason or "", "statistic": f.statistic})
    return out


def print_findings(results: StudyResults, console: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    found = rows(results)
    if not found:
        return
    table = Table(title="Findings", title_justify="left", show_lines=False)
    for col in COLUMNS:
        if col == "claim":
            continue
        table.add_column(col, justify="right" if col in ("effect", "95% CI", "n") else "left",
                         overflow="fold", max_width=48 if col == "why" else None)
    claims: dict[str, str] = {}
    for r in found:
        claims.setdefault(r["finding"], f"{r['claim']} [dim]({r['statistic']})[/dim]")
        colour = VERDICT_COLOURS.get(r["verdict"], "white")
        table.add_row(escape(r["finding"]), escape(r["set"]), r["effect"], r["95% CI"], r["n"],
                      f"[{colour}]{r['verdict']}[/{colour}]", escape(r["control"]), escape(r["why"]))
    console.print(table)
    for fid, claim in claims.items():
        console.print(f"  [bold]{escape(fid)}[/bold]: {claim}")


def markdown_findings(results: StudyResults) -> list[str]:
    found = rows(results)
    if not found:
        return []
    lines = ["## Findings", "", "| finding | set | effect | 95% CI | n | verdict | control | why |",
             "|---|---|---|---|---|---|---|---|"]
    claims: dict[str, str] = {}
    for r in found:
        claims.setdefault(r["finding"], f"{r['claim']} ({r['statistic']})")
        lines.append(f"| {r['finding']} | {r['set']} | {r['effect']} | {r['95% CI']} | {r['n']} | "
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
             "".join(f"<th>{c}</th>" for c in COLUMNS if c != "claim") + "</tr>"]
    claims: dict[str, str] = {}
    for r in found:
        claims.setdefault(r["finding"], f"{r['claim']} ({r['statistic']})")
        parts.append(f"<tr><td title='{e(r['claim'])}'>{e(r['finding'])}</td><td>{e(r['set'])}</td>"
                     f"<td>{e(r['effect'])}</td><td>{e(r['95% CI'])}</td><td>{e(r['n'])}</td>"
                     f"<td class='{css.get(r['verdict'], '')}'>{e(r['verdict'])}</td><td>{e(r['control'])}</td>"
                     f"<td style='text-align:left'>{e(r['why'])}</td></tr>")
    parts.append("</table><ul>" + "".join(f"<li><b>{e(fid)}</b>: {e(c)}</li>" for fid, c in claims.items()) +
                 "</ul>")
    return "\n".join(parts)
