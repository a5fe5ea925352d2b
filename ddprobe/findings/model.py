"""The finding contract: a probe's declared claim, and the verdict it yields for one set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

HOLDS = "holds"
NOT_HOLDS = "does not hold"
INCONCLUSIVE = "inconclusive"
VERDICTS = (HOLDS, NOT_HOLDS, INCONCLUSIVE)


@dataclass
class Finding:
    """One finding for one set: the effect, its 95 % interval, n independent runs and the verdict."""

    id: str
    probe: str
    set: str
    claim: str
    statistic: str
    effect: float | None
    ci: tuple[float, float] | None
    n: int
    unit_of_n: str
    verdict: str
    reason: str | None = None
    threshold: float = 0.0
    control: bool = False
    control_set: str | None = None
    control_verdict: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """What expectations name: ``finding:<id>/<set>``."""
        return f"finding:{self.id}/{self.set}"

    def to_json(self) -> dict[str, Any]:
        def num(v: Any) -> Any:
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v

        return {"id": self.id, "probe": self.probe, "set": self.set, "claim": self.claim,
                "statistic": self.statistic, "effect": num(self.effect),
                "ci": None if self.ci is None else [num(self.ci[0]), num(self.ci[1])], "n": self.n,
                "unit_of_n": self.unit_of_n, "verdict": self.verdict, "reason": self.reason,
                "threshold": self.threshold, "control": self.control, "control_set": self.control_set,
                "control_verdict": self.control_verdict, "details": self.details}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        ci = data.get("ci")
        return cls(data["id"], data["probe"], data["set"], data["claim"], data["statistic"],
                   data.get("effect"), None if ci is None else (ci[0], ci[1]), int(data.get("n", 0)),
                   data.get("unit_of_n", ""), data["verdict"], data.get("reason"), float(data.get("threshold", 0.0)),
                   bool(data.get("control", False)), data.get("control_set"), data.get("control_verdict"),
                   dict(data.get("details") or {}))


@dataclass(frozen=True)
class FindingSpec:
    """A finding a probe declares: its id, the claim in one sentence, the statistic, and how it is judged.

    The claim holds when the effect's whole 95 % interval lies beyond ``threshold`` in the claimed ``direction``
    (``"greater"``: above it; ``"less"``: below it), does not hold when the whole interval lies on the other side,
    and is inconclusive otherwise — and always with fewer than ``min_n`` independent runs.
    """

    id: str
    claim: str
    statistic: str
    unit_of_n: str
    threshold: float = 0.0
    direction: Literal["greater", "less"] = "greater"
    min_n: int = 2
    paper: str = ""

    def judge(self, set_name: str, probe: str, effect: float | None, ci: tuple[float, float] | None, n: int,
              *, unit_of_n: str | None = None, reason: str | None = None, control: bool = False,
              statistic: str | None = None, details: dict[str, Any] | None = None) -> Finding:
        """The finding for one set from an effect and its interval; ``reason`` forces ``inconclusive``."""
        verdict, why = self.verdict(effect, ci, n)
        if reason is not None:
            verdict, why = INCONCLUSIVE, reason
        return Finding(self.id, probe, set_name, self.claim, statistic or self.statistic, effect, ci, n,
                       unit_of_n or self.unit_of_n, verdict, why, self.threshold, control, details=details or {})

    def judge_runs(self, set_name: str, probe: str, values: Sequence[float], **kwargs: Any) -> Finding:
        """The finding from per-run effects (seeds, models, initializations): mean and Student-t interval."""
        from .stats import mean_ci

        effect, ci, n = mean_ci(values)
        return self.judge(set_name, probe, None if n == 0 else effect, ci, n, **kwargs)

    def verdict(self, effect: float | None, ci: tuple[float, float] | None, n: int) -> tuple[str, str | None]:
        if effect is None or (isinstance(effect, float) and math.isnan(effect)) or n == 0:
            return INCONCLUSIVE, "no runs produced the statistic"
        if n < self.min_n or ci is None:
            return INCONCLUSIVE, f"only {n} {self.unit_of_n if n != 1 else _singular(self.unit_of_n)}; " \
                                 f"a verdict needs at least {self.min_n}"
        lo, hi = ci
        if self.direction == "greater":
            holds, fails = lo > self.threshold, hi <= self.threshold
        else:
            holds, fails = hi < self.threshold, lo >= self.threshold
        if holds:
            return HOLDS, None
        if fails:
            return NOT_HOLDS, None
        return INCONCLUSIVE, f"the 95 % interval [{lo:.3g}, {hi:.3g}] includes {self.threshold:g}"


def _singular(unit: str) -> str:
    return unit[:-1] if unit.endswith("s") else unit
