"""Verdict logic on constructed cases with known answers, finding expectations and their validation."""

from __future__ import annotations

import pytest

from ddprobe.expectations import Expectation
from ddprobe.findings import HOLDS, INCONCLUSIVE, NOT_HOLDS, FindingSpec, bootstrap_ci, mean_ci

SPEC = FindingSpec("demo", "the effect is positive", "difference of means", "seeds")


def test_an_effect_far_above_its_interval_holds():
    f = SPEC.judge_runs("dm", "demo", [0.30, 0.31, 0.29, 0.30])
    assert f.verdict == HOLDS and f.reason is None
    assert f.ci[0] > 0 and f.n == 4 and f.effect == pytest.approx(0.30)


def test_one_run_is_never_a_verdict():
    f = SPEC.judge_runs("dm", "demo", [0.9])
    assert f.verdict == INCONCLUSIVE and f.ci is None and f.n == 1
    assert "only 1 seed" in f.reason


def test_an_interval_across_the_threshold_is_inconclusive():
    f = SPEC.judge_runs("dm", "demo", [0.2, -0.1, 0.05])
    assert f.verdict == INCONCLUSIVE and f.ci[0] < 0 < f.ci[1]
    assert "includes 0" in f.reason


def test_an_effect_clearly_on_the_other_side_does_not_hold():
    assert SPEC.judge_runs("dm", "demo", [-0.3, -0.31, -0.29]).verdict == NOT_HOLDS
    less = FindingSpec("drop", "the effect is negative", "difference", "seeds", direction="less")
    assert less.judge_runs("dm", "drop", [-0.3, -0.31, -0.29]).verdict == HOLDS
    assert less.judge_runs("dm", "drop", [0.3, 0.31, 0.29]).verdict == NOT_HOLDS


def test_a_given_reason_forces_inconclusive():
    f = SPEC.judge("dm", "demo", 0.5, (0.4, 0.6), 5, reason="no accuracy-matched subset models")
    assert f.verdict == INCONCLUSIVE and f.reason == "no accuracy-matched subset models"


def test_t_interval_matches_the_textbook_formula():
    from scipy import stats

    values = [1.0, 2.0, 4.0]
    mean, (lo, hi), n = mean_ci(values)
    half = stats.t.ppf(0.975, 2) * stats.tstd(values) / 3 ** 0.5
    assert mean == pytest.approx(7 / 3) and hi - mean == pytest.approx(half) and n == 3


def test_bootstrap_interval_covers_the_mean_and_is_seeded():
    values = [0.0] * 8 + [1.0] * 2
    a, b = bootstrap_ci(values), bootstrap_ci(values)
    assert a == b and a[1][0] <= 0.2 <= a[1][1]
    assert bootstrap_ci([0.0, 0.0, 0.0])[1] == (0.0, 0.0)


def test_finding_expectations_parse_and_check():
    f = SPEC.judge_runs("dm", "demo", [0.3, 0.31, 0.29])
    assert Expectation.parse("finding:demo/dm", "holds").check({}, [f])[0].passed
    assert not Expectation.parse("finding:demo/dm", "does not hold").check({}, [f])[0].passed
    assert Expectation.parse("finding:demo/dm", "!= inconclusive").check({}, [f])[0].passed
    missing = Expectation.parse("finding:demo/dc", "holds").check({}, [f])[0]
    assert not missing.passed and "no finding" in missing.message
    with pytest.raises(ValueError, match="verdict"):
        Expectation.parse("finding:demo/dm", ">= 0.5")
    with pytest.raises(ValueError, match="finding:<finding id>/<set>"):
        Expectation.parse("finding:demo", "holds")


def test_comparison_expectations_use_the_other_metric_and_offset():
    metrics = {"dm/convnet": 0.8, "random_ipc1/convnet": 0.6}
    e = Expectation.parse("dm/convnet", ">= random_ipc1/convnet + 0.1")
    assert e.other == "random_ipc1/convnet" and e.threshold == pytest.approx(0.1)
    assert e.check(metrics)[0].passed
    assert not Expectation.parse("dm/convnet", ">= random_ipc1/convnet + 0.3").check(metrics)[0].passed
    assert Expectation.parse("dm/convnet", "> random_ipc1/convnet - 0.5").check(metrics)[0].passed
    bad = Expectation.parse("dm/convnet", ">= nope/convnet").check(metrics)[0]
    assert not bad.passed and "nope/convnet" in bad.message
