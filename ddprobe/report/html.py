"""report.html: a self-contained page (figures embedded as data URIs).

Layout: the overall result first (passed / expectation failed / probe failed, with every failed expectation and
error), then a table of contents, the findings, the distilled sets with a picture of their images, and one
section per probe.
The page is a list of sections (:func:`sections`), the findings first; the contents list is built from it.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ..results import StudyResults
from .figures import read_description
from .findings import html_findings
from .json_report import to_dict
from .numbers import fmt, fmt_seconds, plural
from .tables import metric_matrices

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.fail{color:#b00020;font-weight:bold}
.ok{color:#137333}.warn{color:#9a6700}img{max-width:100%;border:1px solid #eee;margin:.4em 0}
code{background:#f6f6f6;padding:1px 4px}
.error{background:#fde7e9;padding:.5em;border-radius:4px;white-space:pre-wrap}
.verdict{padding:.8em 1.2em;border-radius:6px;margin:1em 0;font-size:1.1em}
.verdict strong{font-size:1.5em;display:block;margin-bottom:.2em}
.passed{background:#e6f4ea;border:2px solid #137333}.expectation-failed{background:#fef7e0;border:2px solid #b06000}
.probe-failed,.interrupted{background:#fde7e9;border:2px solid #b00020}.meta{color:#555}nav ol{columns:2}
figure{margin:1em 0}figcaption{color:#444;font-size:.92em;max-width:900px}.muted{color:#777}
.sets{display:flex;flex-wrap:wrap;gap:1em}.sets figure{flex:0 1 auto}"""

e = html.escape


def _anchor(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)


def _figure(path: Path, alt: str, fallback: str) -> str:
    if not path.exists():
        return ""
    desc = read_description(path) or {}
    caption = desc.get("caption") or fallback
    b64 = base64.b64encode(path.read_bytes()).decode()
    return (f"<figure><img alt='{e(alt)}' src='data:image/png;base64,{b64}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>")


def _fallback_caption(probe_id: str, name: str, desc: dict[str, Any] | None) -> str:
    """A caption for a figure whose plugin gave none: its title, else what it is called."""
    if desc:
        titles = [desc.get("suptitle")] + [a.get("title") for a in desc.get("axes", [])]
        titles = [t for t in titles if t]
        if titles:
            return titles[0]
    return f"{probe_id}: {name.replace('-', ' ').replace('_', ' ')}"


def _check_text(c: dict[str, Any]) -> str:
    return f"{c['metric']} {c['op']} {fmt(c['threshold'])}"


def overall(results: StudyResults, data: dict[str, Any]) -> str:
    """The overall result, prominently: the verdict, what failed and why, and what ran."""
    status = results.status
    checks = [c for p in data["probes"] for c in p["checks"]]
    failed = [(p["id"], c) for p in data["probes"] for c in p["checks"] if not c["passed"]]
    broken = [p for p in data["probes"] if p["status"] != "ok"]
    line = {"passed": f"all {plural(len(checks), 'expectation')} held" if checks else "every probe ran",
            "expectation failed": f"{len(failed)} of {plural(len(checks), 'expectation')} failed",
            "probe failed": "a probe, distilled set or reporter failed; the others' results are below",
            "interrupted": "stopped before the end: the results of what finished are below",
            }.get(status, "")
    parts = [f"<div class='verdict {status.replace(' ', '-')}'><strong>{e(status)}</strong>{e(line)} · "
             f"{plural(len(data['probes']), 'probe')} · {plural(len(data['distilled']), 'distilled set')} · "
             f"{e(fmt_seconds(results.seconds))} · exit code {results.exit_code}"]
    items = [f"<li>{e(pid)}: {e(_check_text(c))} — "
             + (f"got {e(fmt(c['value']))}" if c["value"] is not None else e(c.get("message") or "no value"))
             + "</li>" for pid, c in failed]
    items += [f"<li>probe {e(p['id'])} failed: {e(p['error'] or '')}</li>" for p in broken]
    items += [f"<li>{e(err)}</li>" for err in data["errors"]]
    if items:
        parts.append("<ul>" + "".join(items) + "</ul>")
    parts.append("</div>")
    prov = data["provenance"]
    parts.append(f"<p class='meta'>seed {results.seed} · {e(str(prov.get('device')))} · torch "
                 f"{e(str(prov.get('torch')))} · ddprobe {e(str(data['ddprobe_version']))}"
                 + (f" · spec <code>{e(results.spec_path)}</code>" if results.spec_path else "")
                 + (f" · started {e(str(prov['started']))}" if prov.get("started") else "") + "</p>")
    return "\n".join(parts)


def distilled_section(results: StudyResults, data: dict[str, Any]) -> str:
    out = results.output_dir
    parts = ["<table><tr><th>set</th><th>made by</th><th>images per class</th><th>images</th><th>time</th>"
             "<th>status</th></tr>"]
    for name, d in data["distilled"].items():
        cls = "ok" if d["status"] == "ok" else "fail"
        parts.append(f"<tr><td>{e(name)}{' (control)' if d['control'] else ''}</td>"
                     f"<td>{e(str(d['distiller'] or d['source'] or ''))}</td><td>{fmt(d['ipc'])}</td>"
                     f"<td>{fmt(d['images'])}</td><td>{e(fmt_seconds(d['seconds']))}</td><td class='{cls}'>"
                     f"{e(d['status'])} {e(d['error'] or '')}</td></tr>")
    parts.append("</table><div class='sets'>")
    for name, d in data["distilled"].items():
        if d.get("figure"):
            parts.append(_figure(out / d["figure"], f"images of {name}", f"The images of {name}."))
    parts.append("</div>")
    return "\n".join(parts)


def _probe_head(p: dict[str, Any]) -> str:
    if p.get("cached"):
        original = p.get("computed_seconds")
        took = (f"cached: loaded in {fmt_seconds(p['seconds'])}"
                + (f", computed in {fmt_seconds(original)} by an earlier run" if original is not None else ""))
    else:
        took = f"computed in {fmt_seconds(p['seconds'])}"
    return f"<p class='muted'>kind <code>{e(p['kind'])}</code> · {e(took)}</p>"


def probe_section(results: StudyResults, p: dict[str, Any], sets: list[str]) -> str:
    out = results.output_dir
    parts = [_probe_head(p)]
    if p["status"] != "ok":
        parts.append(f"<pre class='error'>{e(p['error'] or '')}</pre>")
        return "\n".join(parts)
    if p["summary"]:
        parts.append(f"<p>{e(p['summary'])}</p>")
    if p["checks"]:
        parts.append("<table><tr><th>expectation</th><th>value</th><th>result</th></tr>")
        for c in p["checks"]:
            res = "<span class='ok'>pass</span>" if c["passed"] else "<span class='fail'>FAIL</span>"
            value = fmt(c["value"]) if c["value"] is not None else (c.get("message") or "no value")
            parts.append(f"<tr><td>{e(_check_text(c))}</td><td>{e(value)}</td><td>{res}</td></tr>")
        parts.append("</table>")
    matrices, rest = metric_matrices(p["metrics"], sets)
    for m in matrices:
        parts.append("<table><tr><th></th>" + "".join(f"<th>{e(c)}</th>" for c in m.cols) + "</tr>")
        for r in m.rows:
            parts.append(f"<tr><td>{e(r)}</td>" + "".join(f"<td>{e(fmt(m.cells.get((r, c))))}</td>"
                                                           for c in m.cols) + "</tr>")
        parts.append("</table>")
    if rest:
        parts.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
            f"<tr><td>{e(k)}</td><td>{e(fmt(v))}</td></tr>" for k, v in rest.items()) + "</table>")
    for name, rel in p["figures"].items():
        path = out / rel
        parts.append(_figure(path, f"{p['id']} {name}", _fallback_caption(p["id"], name, read_description(path))))
    if p["tables"]:
        parts.append("<p class='muted'>tables: " + ", ".join(
            f"<a href='{e(rel)}'>{e(name)}</a>" for name, rel in p["tables"].items()) + "</p>")
    return "\n".join(parts)


def sections(results: StudyResults, data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The page's sections after the overall result and the contents list, as (anchor, title, html): the
    findings first (when the study's probes declare any), then the distilled sets and one section per probe."""
    sets = list(data["distilled"])
    out = [("distilled-sets", "Distilled sets", distilled_section(results, data))]
    findings = html_findings(results)
    if findings:
        out.insert(0, ("findings", "Findings", findings))
    for p in data["probes"]:
        mark = "" if p["status"] == "ok" and all(c["passed"] for c in p["checks"]) else " ✗"
        out.append((f"probe-{_anchor(p['id'])}", f"{p['id']}{mark}", probe_section(results, p, sets)))
    if data["errors"]:
        out.append(("errors", "Errors", "".join(f"<p class='error'>{e(err)}</p>" for err in data["errors"])))
    return out


def render(results: StudyResults) -> str:
    data = to_dict(results)
    body = sections(results, data)
    toc = "<nav><h2>Contents</h2><ol>" + "".join(
        f"<li><a href='#{a}'>{e(title)}</a></li>" for a, title, _ in body) + "</ol></nav>"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ddprobe {e(results.name)}: "
             f"{e(results.status)}</title><style>{STYLE}</style></head><body>",
             f"<h1>ddprobe study <code>{e(results.name)}</code></h1>", overall(results, data), toc]
    for anchor, title, content in body:
        head = "" if content.lstrip().startswith("<h2") else f"<h2>{e(title)}</h2>\n"  # findings bring their own
        parts.append(f"<section id='{anchor}'>{head}{content}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


class HtmlReporter:
    name = "html"
    description = "report.html: one self-contained page with tables and embedded figures"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "report.html"
        path.write_text(render(results))
        return path
