"""Expectations in a spec (``expect = { "dm/convnet" = ">= 0.8" }``) and their evaluation."""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from dataclasses import dataclass

from .results import Check

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": None}
_PATTERN = re.compile(r"^\s*(>=|<=|==|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


@dataclass(frozen=True)
class Expectation:
    metric: str  # a metric key, or a glob such as "*/convnet" that every matching metric must satisfy
    op: str
    threshold: float

    @classmethod
    def parse(cls, metric: str, text: str | float | int) -> Expectation:
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            return cls(metric, "==", float(text))
        m = _PATTERN.match(str(text))
        if not m:
            raise ValueError(
                f"cannot read expectation {text!r}: write an operator and a number, e.g. \">= 0.8\" "
                f"(operators: {', '.join(OPS)})"
            )
        return cls(metric, m.group(1), float(m.group(2)))

    def holds(self, value: float) -> bool:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if self.op == "==":
            return math.isclose(value, self.threshold, rel_tol=1e-9, abs_tol=1e-12)
        return bool(OPS[self.op](value, self.threshold))

    def check(self, metrics: dict[str, float]) -> list[Check]:
        keys = [k for k in metrics if fnmatch.fnmatchcase(k, self.metric)] if _is_glob(self.metric) else (
            [self.metric] if self.metric in metrics else [])
        if not keys:
            from .errors import suggest

            return [Check(self.metric, self.op, self.threshold, None, False,
                          f"no metric named {self.metric!r}; {suggest(self.metric, metrics)}")]
        return [Check(k, self.op, self.threshold, metrics[k], self.holds(metrics[k])) for k in keys]


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")
