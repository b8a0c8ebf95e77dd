"""Wilson intervals and the A/B comparison (Newcombe interval, z-test), checked against statsmodels."""

from __future__ import annotations

from rosi_vllm.core.stats import wilson_interval


def test_wilson_interval():
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.09
    lo, hi = wilson_interval(25, 50)
    assert lo < 0.5 < hi and abs((0.5 - lo) - (hi - 0.5)) < 1e-9
    assert wilson_interval(0, 0) == (0.0, 1.0)
    for k in range(0, 101):
        lo, hi = wilson_interval(k, 100)
        assert lo <= k / 100 <= hi


# ---- statsmodels as an oracle (a test-only dependency; rosi_vllm never imports it) --------------------------------

import math  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402

from rosi_vllm.reports.ab import ArmStats, compare_refusal  # noqa: E402

proportion = pytest.importorskip("statsmodels.stats.proportion")

#: (k, n) with k from 0 to n: the edges are where hand-written intervals usually go wrong
GRID = [(k, n) for n in (1, 2, 3, 5, 10, 17, 50, 100, 1000) for k in sorted({0, 1, n // 3, n // 2, n - 1, n})]
#: control × treatment pairs for the two-sample comparison (a subset, to keep it fast)
PAIRS = [(a, b) for a in GRID for b in GRID if a[1] in (1, 5, 17, 100, 1000) and b[1] in (2, 10, 50, 1000)]
TOL = 1e-6  # stats.py writes z = 1.959964; statsmodels uses norm.ppf(0.975) = 1.95996398...


def test_wilson_interval_matches_statsmodels():
    for k, n in GRID:
        lo, hi = proportion.proportion_confint(k, n, alpha=0.05, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=TOL), (k, n)


def _compare(control, treatment) -> dict:
    (k1, n1), (k2, n2) = control, treatment
    return compare_refusal(ArmStats(arm="base", variant="base", judged=n1, refusals=k1),
                           ArmStats(arm="strict", variant="strict", judged=n2, refusals=k2))


def test_ab_difference_interval_is_newcombe_as_in_statsmodels():
    """reports/ab.py: treatment − control with the Newcombe hybrid-score interval (statsmodels' "newcomb")."""
    for control, treatment in PAIRS:
        (k1, n1), (k2, n2) = control, treatment
        result = _compare(control, treatment)
        lo, hi = proportion.confint_proportions_2indep(k2, n2, k1, n1, method="newcomb", compare="diff")
        assert result["difference"] == pytest.approx(k2 / n2 - k1 / n1, abs=1e-12)
        assert result["difference_ci95"] == pytest.approx([lo, hi], abs=TOL), (control, treatment)
        assert lo - TOL <= result["difference"] <= hi + TOL


def test_ab_p_value_is_the_pooled_two_sided_z_test_of_statsmodels():
    for control, treatment in PAIRS:
        (k1, n1), (k2, n2) = control, treatment
        result = _compare(control, treatment)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # statsmodels divides by a zero pooled variance
            _, p_value = proportion.proportions_ztest([k2, k1], [n2, n1], alternative="two-sided")
        if math.isnan(p_value):  # both arms all refusals or none: no evidence of a difference
            assert result["p_value"] == 1.0 and not result["significant_at_0.05"], (control, treatment)
        else:
            assert result["p_value"] == pytest.approx(p_value, rel=1e-9, abs=1e-12), (control, treatment)
            assert result["significant_at_0.05"] == (p_value < 0.05)


def test_empty_arm_has_no_p_value():
    result = _compare((0, 0), (3, 10))
    assert result["p_value"] is None and not result["significant_at_0.05"]


def test_mean_upper_bound_is_the_one_sided_z_bound_of_statsmodels():
    import random

    from statsmodels.stats.weightstats import DescrStatsW

    from rosi_vllm.core.stats import mean_upper_bound

    rng = random.Random(0)
    values = [rng.expovariate(20.0) for _ in range(60)]  # heavy right tail, like per-prompt KL
    _, upper = DescrStatsW(values).zconfint_mean(alpha=0.10)  # two-sided 90 % = one-sided 95 %
    assert abs(mean_upper_bound(values) - upper) < 1e-12
    assert mean_upper_bound(values) > sum(values) / len(values)
    assert mean_upper_bound([0.2] * 10) == 0.2 and mean_upper_bound([0.1]) == float("inf")
