"""junit.xml: one test case per expectation (and per probe error), for CI dashboards."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from ..results import StudyResults


def render(results: StudyResults) -> str:
    suite = ET.Element("testsuite", name=f"ddprobe.{results.name}")
    tests = failures = errors = 0
    for name, d in results.distilled.items():
        if d.status != "ok":
            case = ET.SubElement(suite, "testcase", classname="ddprobe.distilled", name=name)
            ET.SubElement(case, "error", message=d.error or "failed").text = d.error
            tests += 1
            errors += 1
    for p in results.probes:
        if p.status != "ok":
            case = ET.SubElement(suite, "testcase", classname=f"ddprobe.{p.id}", name=f"{p.id} runs",
                                 time=f"{p.seconds:.3f}")
            ET.SubElement(case, "error", message=p.error or "error").text = p.traceback or p.error
            tests += 1
            errors += 1
            continue
        for c in p.checks:
            case = ET.SubElement(suite, "testcase", classname=f"ddprobe.{p.id}",
                                 name=f"{c.metric} {c.op} {c.threshold}")
            tests += 1
            if not c.passed:
                failures += 1
                msg = c.message or f"{c.metric} = {c.value} does not satisfy {c.op} {c.threshold}"
                ET.SubElement(case, "failure", message=msg).text = msg
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("time", f"{results.seconds:.3f}")
    ET.indent(suite)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


class JunitReporter:
    name = "junit"
    description = "junit.xml: a test case per expectation, errors for failed probes"

    def write(self, results: StudyResults, directory: Path) -> Path:
        path = Path(directory) / "junit.xml"
        path.write_text(render(results))
        return path
