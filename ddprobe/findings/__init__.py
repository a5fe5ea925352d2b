"""Findings: what a probe concludes about each set, with an effect, a 95 % interval, n and a verdict.

A probe that stands for a finding of the paper declares it (:class:`FindingSpec`) and returns, per set, a
:class:`Finding` made by :meth:`FindingSpec.judge` from independent runs. The verdict is never drawn from one run:
with fewer than two runs, or an interval that straddles the threshold, it is ``inconclusive``, with a reason.
"""

from .model import HOLDS, INCONCLUSIVE, NOT_HOLDS, VERDICTS, Finding, FindingSpec
from .stats import bootstrap_ci, mean_ci, paired_differences

__all__ = ["Finding", "FindingSpec", "HOLDS", "NOT_HOLDS", "INCONCLUSIVE", "VERDICTS", "mean_ci", "bootstrap_ci",
           "paired_differences"]
