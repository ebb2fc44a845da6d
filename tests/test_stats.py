"""ablate.stats against cases computed by hand, the verdict rule, TOST, Holm, and calibration by simulation."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student
from statsmodels.stats.weightstats import ttost_paired

from ablate import directions, stats

# 2 arms x 3 seeds x 4 problems. Arm B is anything; arm A = B + 0.5 + a_seed + b_problem, so the paired contrast
# d = A - B = 0.5 + a_s + b_p with a = (-1, 0, 1) and b = (-1.5, -0.5, 0.5, 1.5).
A_SEED, B_PROBLEM = np.array([-1.0, 0.0, 1.0]), np.array([-1.5, -0.5, 0.5, 1.5])


def _table():
    rng = np.random.default_rng(3)
    rows = []
    for s, a in enumerate(A_SEED):
        for p, b in enumerate(B_PROBLEM):
            base = rng.uniform(0, 1)
            rows += [{"arm": "B", "seed": s, "pkey": p, "value": base},
                     {"arm": "A", "seed": s, "pkey": p, "value": base + 0.5 + a + b}]
    return pd.DataFrame(rows)


def test_the_paired_two_way_estimate_matches_the_hand_computation():
    t = _table()
    pairs = directions.paired((1, t[t.arm == "A"], "value"), (-1, t[t.arm == "B"], "value"))
    e = stats.clustered(pairs.d, pairs.seed, pairs.pkey)
    # residuals e_sp = a_s + b_p (their mean is 0), N = 12. Cluster-robust variances of the mean, each with its
    # G / (G - 1) correction, divided by N^2:
    #   seeds:    sums over problems 4 a_s = (-4, 0, 4):             3/2 * 32 / 144 = 1/3
    #   problems: sums over seeds 3 b_p = (-4.5, -1.5, 1.5, 4.5):   4/3 * 45 / 144 = 5/12
    #   pairs:    sum of e_sp^2 = 4 * 2 + 3 * 5 = 23:               12/11 * 23 / 144
    v_seed, v_problem = 1 / 3, 5 / 12 - 12 / 11 * 23 / 144  # the pair term comes out of the problems' share
    assert e.estimate == pytest.approx(0.5)
    assert e.se == pytest.approx(math.sqrt(v_seed + v_problem))
    # Banerjee: each share with the t quantile of its own G - 1 df (seeds 2, problems 3)
    half = math.sqrt(student.ppf(0.975, 2) ** 2 * v_seed + student.ppf(0.975, 3) ** 2 * v_problem)
    assert (e.low, e.high) == pytest.approx((0.5 - half, 0.5 + half))
    # the df reported is the one whose quantile gives that half-width: between 2 and 3
    assert 2 < e.df < 3 and student.ppf(0.975, e.df) * e.se == pytest.approx(half)
    assert e.per_seed == pytest.approx({0: -0.5, 1: 0.5, 2: 1.5})  # 0.5 + a_s: each seed's mean over problems
    assert (e.seeds, e.problems, e.n) == (3, 4, 12)


def test_one_problem_is_the_paired_t_test_over_seeds():
    d = np.array([0.2, 0.5, 0.3, 0.6, 0.4])  # one value per seed; mean 0.4, sd 0.158114
    e = stats.clustered(d, np.arange(5), np.zeros(5))
    assert e.estimate == pytest.approx(0.4)
    assert e.se == pytest.approx(0.15811388 / math.sqrt(5))
    assert e.df == 4
    # TOST against a margin of 0.5 equals statsmodels' paired TOST of the same numbers
    p_tost = stats.tost(e.estimate, e.se, e.df, 0.5)
    assert p_tost == pytest.approx(ttost_paired(d, np.zeros(5), -0.5, 0.5)[0])


def test_the_slope_is_the_least_squares_slope_with_per_seed_slopes():
    x = np.tile([0.0, 0.5, 1.0], 4)
    seed = np.repeat(np.arange(4), 3)
    slopes = np.array([-0.2, -0.3, -0.4, -0.3])
    d = 0.1 + slopes[seed] * x
    e = stats.clustered(d, seed, np.tile(np.arange(3), 4), x=x)
    assert e.estimate == pytest.approx(-0.3)
    assert e.per_seed == pytest.approx(dict(enumerate(slopes)))
    assert e.has_error_bar and e.low < -0.3 < e.high


def test_one_seed_has_no_error_bar_and_no_variance_has_none_either():
    one = stats.clustered([0.1, 0.2, 0.3], [7, 7, 7], [0, 1, 2])
    assert math.isnan(one.se) and not one.has_error_bar and one.per_seed == pytest.approx({7: 0.2})
    flat = stats.clustered([0.2] * 6, [0, 0, 0, 1, 1, 1], [0, 1, 2] * 2)
    assert flat.se == 0 and not flat.has_error_bar
    assert stats.verdict(one, -1) == "no error bar"
    assert stats.verdict(flat, +1) == "no error bar"  # never "holds" without an error bar (was: infinite z)
    assert stats.verdict(stats.Estimate(math.nan), -1) == "not measured"


def test_mde_is_2_8_se_with_many_degrees_of_freedom_and_wider_with_few():
    assert stats.mde(1.0, 10_000) == pytest.approx(1.96 + 0.8416, abs=1e-3)
    assert stats.mde(0.5, 1) == pytest.approx(0.5 * 16.334, rel=1e-3)  # two seeds
    assert math.isnan(stats.mde(math.nan, 3))


def test_verdict_rule():
    def e(estimate, se, df=20.0):
        return stats.Estimate(estimate, se=se, df=df, p=float(2 * student.sf(abs(estimate) / se, df)))

    assert stats.verdict(e(-0.3, 0.1), -1) == "holds"
    assert stats.verdict(e(0.3, 0.1), -1) == "opposite"
    assert stats.verdict(e(0.3, 0.1), 0) == "differs"  # a predicted null that is rejected
    assert stats.verdict(e(-0.3, 0.1), -1, p=0.2, margin=0.05) == "inconclusive"  # the adjusted p decides
    # not significant: inside the margin -> equivalent, otherwise inconclusive; without a margin, not significant
    assert stats.verdict(e(0.01, 0.01), -1, margin=0.05) == "equivalent"
    assert stats.verdict(e(0.01, 0.05), -1, margin=0.05) == "inconclusive"
    assert stats.verdict(e(0.01, 0.05), -1) == "not significant"


def test_tost_by_hand():
    # estimate 0.01, se 0.01, df 20, margin 0.05: the two one-sided t statistics are 6 and -4
    assert stats.tost(0.01, 0.01, 20, 0.05) == pytest.approx(max(student.sf(6, 20), student.cdf(-4, 20)))
    assert math.isnan(stats.tost(0.01, 0.0, 20, 0.05))


def test_holm_by_hand_with_non_tests_left_out():
    # sorted 0.01, 0.02, 0.04 -> 3 x 0.01 = 0.03, max(0.03, 2 x 0.02) = 0.04, max(0.04, 0.04) = 0.04
    adjusted = stats.holm([0.04, 0.01, math.nan, 0.02])
    assert adjusted[[0, 1, 3]] == pytest.approx([0.04, 0.03, 0.04])
    assert math.isnan(adjusted[2])


def _calibration():
    spec = importlib.util.spec_from_file_location("calibration", Path(__file__).parents[1] / "benchmarks" /
                                                  "calibration.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_calibration_fast_mode_new_intervals_cover_and_old_ones_do_not():
    """A fast run of benchmarks/calibration.py: the new estimator's 95% intervals cover the truth about 95% of the
    time and a true null rarely 'holds'; the old one's intervals (problems as independent units) undercover. The
    bands are wide (100 sweeps: a binomial sd of about 2.2%) so that this does not flake."""
    table = _calibration().run(reps=100, seed=1, metrics=("correct",))
    new, old = table[table.estimator == "new"], table[table.estimator == "old"]
    assert new.coverage.between(0.86, 1.0).all(), table
    assert (new.false_holds.dropna() <= 0.10).all(), table
    assert (old.coverage < new.coverage.values).all(), table
