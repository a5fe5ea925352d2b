"""Expectations in a spec and their evaluation.

Three forms, all in a probe's ``expect`` table:

- a threshold: ``"dm/convnet" = ">= 0.8"`` (a metric key, or a glob such as ``"*/convnet"`` that every match meets);
- a comparison with another metric of the same probe, with an optional offset:
  ``"dm/convnet" = ">= random_ipc1/convnet + 0.1"``;
- a finding's verdict: ``"finding:agreement/dm" = "holds"`` (``holds``, ``does not hold`` or ``inconclusive``;
  ``"!= does not hold"`` accepts either of the other two).
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .results import Check

if TYPE_CHECKING:
    from .findings import Finding

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": None}
FINDING_PREFIX = "finding:"
VERDICTS = ("holds", "does not hold", "inconclusive")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_PATTERN = re.compile(rf"^\s*(>=|<=|==|>|<)\s*({_NUMBER})\s*$")
_COMPARISON = re.compile(rf"^\s*(>=|<=|==|>|<)\s*([^\s+*?\[\]]+?)\s*(?:([-+])\s*({_NUMBER}))?\s*$")
_VERDICT = re.compile(r"^\s*(==|!=)?\s*(holds|does not hold|inconclusive)\s*$")


@dataclass(frozen=True)
class Expectation:
    metric: str  # a metric key, a glob such as "*/convnet", or "finding:<finding id>/<set>"
    op: str
    threshold: float | str  # a number, or a verdict for finding expectations
    other: str | None = None  # the metric compared with, for "metric >= other + offset"

    @property
    def is_finding(self) -> bool:
        return self.metric.startswith(FINDING_PREFIX)

    @classmethod
    def parse(cls, metric: str, text: str | float | int) -> Expectation:
        if metric.startswith(FINDING_PREFIX):
            return cls._parse_finding(metric, text)
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(metric, "==", float(text))
        m = _PATTERN.match(str(text))
        if m:
            return cls(metric, m.group(1), float(m.group(2)))
        m = _COMPARISON.match(str(text))
        if m and not is_glob(metric):
            sign = -1.0 if m.group(3) == "-" else 1.0
            return cls(metric, m.group(1), sign * float(m.group(4) or 0.0), other=m.group(2))
        raise ValueError(
            f"cannot read expectation {text!r}: write an operator and a number, e.g. \">= 0.8\", or another metric "
            f"of the same probe with an optional offset, e.g. \">= random_ipc1/convnet + 0.1\" "
            f"(operators: {', '.join(OPS)})"
        )

    @classmethod
    def _parse_finding(cls, metric: str, text: str | float | int) -> Expectation:
        name = metric[len(FINDING_PREFIX):]
        if name.count("/") != 1 or not all(name.split("/")):
            raise ValueError(f"name a finding as \"finding:<finding id>/<set>\", e.g. \"finding:agreement/dm\"; "
                             f"got {metric!r}")
        m = _VERDICT.match(str(text)) if isinstance(text, str) else None
        if not m:
            raise ValueError(f"cannot read {text!r} as a verdict: write one of {', '.join(map(repr, VERDICTS))}, "
                             f"optionally after != (e.g. \"!= does not hold\")")
        return cls(metric, m.group(1) or "==", m.group(2))

    @property
    def finding_id(self) -> str:
        return self.metric[len(FINDING_PREFIX):].split("/")[0]

    @property
    def finding_set(self) -> str:
        return self.metric[len(FINDING_PREFIX):].split("/")[1]

    def metric_keys(self) -> list[str]:
        """Every metric key (or glob) this expectation reads; ``ddprobe validate`` checks each can exist.

        A comparison reads its own key and the metric it compares with; a finding reads no metric.
        """
        if self.is_finding:
            return []
        return [self.metric] if self.other is None else [self.metric, self.other]

    def describe(self) -> str:
        """The right-hand side as written: ``>= 0.8``, ``>= random_ipc1/convnet + 0.1``, ``== holds``."""
        if self.other is not None:
            offset = "" if self.threshold == 0 else f" {'+' if float(self.threshold) > 0 else '-'} " \
                                                    f"{abs(float(self.threshold)):g}"
            return f"{self.op} {self.other}{offset}"
        return f"{self.op} {self.threshold}"

    def holds(self, value: float, threshold: float | None = None) -> bool:
        threshold = float(self.threshold) if threshold is None else threshold
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.op == "==":
            return math.isclose(value, threshold, rel_tol=1e-9, abs_tol=1e-12)
        return bool(OPS[self.op](value, threshold))

    def check(self, metrics: dict[str, float], findings: list[Finding] | None = None) -> list[Check]:
        from .errors import suggest

        if self.is_finding:
            return [self._check_finding(findings or [])]
        keys = [k for k in metrics if fnmatch.fnmatchcase(k, self.metric)] if is_glob(self.metric) else (
            [self.metric] if self.metric in metrics else [])
        if not keys:
            return [Check(self.metric, self.op, self.threshold, None, False,
                          f"no metric named {self.metric!r}; {suggest(self.metric, metrics)}")]
        if self.other is not None:
            if self.other not in metrics:
                return [Check(self.metric, self.op, self.describe(), metrics[self.metric], False,
                              f"no metric named {self.other!r} to compare with; {suggest(self.other, metrics)}")]
            bound = float(metrics[self.other]) + float(self.threshold)
            return [Check(self.metric, self.op, self.describe(), metrics[self.metric],
                          self.holds(metrics[self.metric], bound), f"{self.other} + offset = {bound:.4g}")]
        return [Check(k, self.op, self.threshold, metrics[k], self.holds(metrics[k])) for k in keys]

    def _check_finding(self, findings: list[Finding]) -> Check:
        from .errors import suggest

        match = next((f for f in findings if f.key == self.metric), None)
        if match is None:
            return Check(self.metric, self.op, self.threshold, None, False,
                         f"no finding named {self.metric!r}; {suggest(self.metric, [f.key for f in findings])}")
        passed = (match.verdict == self.threshold) == (self.op == "==")
        return Check(self.metric, self.op, self.threshold, match.verdict, passed, match.reason or "")


def is_glob(text: str) -> bool:
    """Whether a metric key is an ``fnmatch`` pattern."""
    return any(ch in text for ch in "*?[")
