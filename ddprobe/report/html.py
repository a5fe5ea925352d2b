"""report.html: a self-contained page (figures embedded as data URIs)."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..results import StudyResults
from .findings import html_findings
from .json_report import to_dict
from .tables import metric_matrices

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.fail{color:#b00020;font-weight:bold}
.ok{color:#137333}.warn{color:#9a6700}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}code{background:#f6f6f6;padding:1px 4px}
.error{background:#fde7e9;padding:.5em;border-radius:4px}"""


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else html.escape(str(v)))


def render(results: StudyResults) -> str:
    data = to_dict(results)
    out = results.output_dir
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ddprobe {e(results.name)}</title>"
             f"<style>{STYLE}</style></head><body><h1>ddprobe study <code>{e(results.name)}</code></h1>",
             f"<p>seed {results.seed} · {e(str(data['provenance'].get('device')))} · "
             f"torch {e(str(data['provenance'].get('torch')))} · {results.seconds:.1f} s · exit code "
             f"{results.exit_code}</p>", html_findings(results),
             "<h2>Distilled sets</h2><table><tr><th>set</th><th>distiller</th><th>ipc</th>"
             "<th>images</th><th>seconds</th><th>status</th></tr>"]
    for name, d in data["distilled"].items():
        secs = "" if d["seconds"] is None else f"{d['seconds']:.1f}"
        cls = "ok" if d["status"] == "ok" else "fail"
        parts.append(f"<tr><td>{e(name)}{' (control)' if d['control'] else ''}</td><td>{e(str(d['distiller']))}"
                     f"</td><td>{d['ipc']}</td><td>{d['images']}</td><td>{secs}</td><td class='{cls}'>"
                     f"{e(d['status'])} {e(d['error'] or '')}</td></tr>")
    parts.append("</table>")
    for p in data["probes"]:
        parts.append(f"<h2>{e(p['id'])} <small>({e(p['kind'])}, {p['seconds']:.1f} s)</small></h2>")
        if p["status"] != "ok":
            parts.append(f"<pre class='error'>{e(p['error'] or '')}</pre>")
            continue
        parts.append(f"<p>{e(p['summary'])}</p>")
        matrices, rest = metric_matrices(p["metrics"])
        for m in matrices:
            parts.append("<table><tr><th></th>" + "".join(f"<th>{e(c)}</th>" for c in m.cols) + "</tr>")
            for r in m.rows:
                parts.append(f"<tr><td>{e(r)}</td>" + "".join(f"<td>{_fmt(m.cells.get((r, c)))}</td>"
                                                           for c in m.cols) + "</tr>")
            parts.append("</table>")
        if rest:
            parts.append("<table><tr><th>metric</th><th>value</th></tr>" + "".join(
                f"<tr><td>{e(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in rest.items()) + "</table>")
        if p["checks"]:
            parts.append("<table><tr><th>expectation</th><th>value</th><th>result</th></tr>")
            for c in p["checks"]:
                res = "<span class='ok'>pass</span>" if c["passed"] else "<span class='fail'>FAIL</span>"
                parts.append(f"<tr><td>{e(c['metric'])} {e(c['op'])} {c['threshold']}</td>"
                             f"<td>{_fmt(c['value'])}</td><td>{res}</td></tr>")
            parts.append("</table>")
        for name, rel in p["figures"].items():
            path = out / rel
            if path.exists():
                b64 = base64.b64encode(path.read_bytes()).decode()
                parts.append(f"<figure><img alt='{e(name)}' src='data:image/png;base64,{b64}'>"
                             f"<figcaption>{e(name)}</figcaption></figure>")
    for err in data["errors"]:
        parts.append(f"<p class='error'>{e(err)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


class HtmlReporter:
    name = "html"
    description = "report.html: one self-contained page with tables and embedded figures"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "report.html"
        path.write_text(render(results))
        return path
