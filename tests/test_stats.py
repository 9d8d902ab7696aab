"""vitos.stats against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vitos.stats import (
    bootstrap_replicate_means,
    mcnemar_exact,
    mean_ci,
    paired_bootstrap,
    paired_bootstrap_ratio,
    student_t_cdf,
    t_quantile,
    wilson_interval,
)


# ---------------------------------------------------------------- Wilson
def test_wilson_8_of_10():
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4)
    assert high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_by_formula_and_edges():
    # 0/10: centre = (z^2/20)/(1+z^2/10), halfwidth = z/(1+z^2/10) * sqrt(z^2/400); low is exactly 0
    z = 1.959964
    low, high = wilson_interval(0, 10)
    assert low == 0.0
    assert high == pytest.approx(2 * (z * z / 20) / (1 + z * z / 10), rel=1e-12)
    assert high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    # 50/100: symmetric around 0.5
    low, high = wilson_interval(50, 100)
    assert low + high == pytest.approx(1.0)
    assert low == pytest.approx(0.4038, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


# ---------------------------------------------------------------- McNemar
def test_mcnemar_hand_values():
    assert mcnemar_exact(1, 6) == pytest.approx(0.125)  # 2 * (1 + 7) / 128
    assert mcnemar_exact(6, 1) == pytest.approx(0.125)
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 / 32
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact(2, 8) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_mcnemar_large_counts_are_finite():
    p = mcnemar_exact(400, 600)
    assert 0.0 < p < 1e-9


# ---------------------------------------------------------------- t quantile / mean_ci
@pytest.mark.parametrize(
    "df,expected", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (30, 2.0423), (1000, 1.9623)]
)
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)


def test_t_cdf_closed_forms():
    # df = 1 is Cauchy: F(t) = 1/2 + atan(t)/pi; df = 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2))
    for t in (-3.0, -0.5, 0.0, 0.7, 5.0):
        assert student_t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert t_quantile(0.025, 5) == pytest.approx(-t_quantile(0.975, 5))


def test_mean_ci_of_1_2_3():
    mean, low, high = mean_ci([1, 2, 3])
    assert mean == 2.0
    assert high - mean == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)
    assert mean - low == pytest.approx(4.302653 / math.sqrt(3), rel=1e-6)


def test_mean_ci_edges():
    mean, low, high = mean_ci([0.5])
    assert mean == 0.5 and math.isnan(low) and math.isnan(high)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError):
        mean_ci([])


# ---------------------------------------------------------------- paired bootstrap
def test_bootstrap_identical_vectors():
    a = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1]
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0, 1.0)
    assert paired_bootstrap_ratio(a, a) == (1.0, 1.0, 1.0, 1.0)


def test_bootstrap_deterministic_and_seed_dependent():
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.6).astype(float)
    b = (rng.random(300) < 0.5).astype(float)
    first = paired_bootstrap(a, b, n_boot=500, seed=3)
    assert first == paired_bootstrap(a, b, n_boot=500, seed=3)
    assert first != paired_bootstrap(a, b, n_boot=500, seed=4)
    assert first[0] == pytest.approx(a.mean() - b.mean())
    assert first[1] <= first[0] <= first[2]


def test_bootstrap_known_shift_is_significant_and_ci_matches_normal_theory():
    # b = a with 60 of 400 correct answers turned wrong: a is better on exactly 60 questions, never worse.
    a = np.ones(400)
    a[:100] = 0
    b = a.copy()
    b[100:160] = 0
    diff, low, high, p = paired_bootstrap(a, b, n_boot=2000, seed=0)
    assert diff == pytest.approx(0.15)
    # the paired difference d_i is 0/1 with mean 0.15: se = sqrt(0.15 * 0.85 / 400) = 0.01785
    se = math.sqrt(0.15 * 0.85 / 400)
    assert low == pytest.approx(0.15 - 1.96 * se, abs=0.01)
    assert high == pytest.approx(0.15 + 1.96 * se, abs=0.01)
    assert p == pytest.approx(1 / 2001)  # no replicate is as far from 0.15 as 0.15 is from 0


def test_bootstrap_ratio():
    a = np.ones(400)
    a[:100] = 0  # mean 0.75
    b = a.copy()
    b[100:160] = 0  # mean 0.6
    ratio, low, high, p = paired_bootstrap_ratio(a, b, n_boot=1000, seed=0)
    assert ratio == pytest.approx(0.75 / 0.6)
    assert low < ratio < high
    assert low > 1.0 and p < 0.01
    r2 = paired_bootstrap_ratio(b, a, n_boot=1000, seed=0)
    assert r2[0] == pytest.approx(0.6 / 0.75) and r2[2] < 1.0
    nan_case = paired_bootstrap_ratio([1, 1], [0, 0], n_boot=10)
    assert all(math.isnan(v) for v in nan_case)


def test_bootstrap_custom_stat_and_validation():
    a = [1, 1, 0, 1]
    b = [0, 1, 0, 0]
    obs, *_ = paired_bootstrap(a, b, stat=lambda x, y: x.sum(axis=-1) - y.sum(axis=-1), n_boot=50)
    assert obs == 2.0
    with pytest.raises(ValueError):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError):
        paired_bootstrap([], [])


def test_replicate_means_are_the_bootstrap_resamples():
    rng = np.random.default_rng(5)
    a = (rng.random(120) < 0.7).astype(float)
    b = (rng.random(120) < 0.5).astype(float)
    ma, mb = bootstrap_replicate_means(a, b, n_boot=300, seed=9)
    assert ma.shape == mb.shape == (300,)
    ratio, low, high, _ = paired_bootstrap_ratio(a, b, n_boot=300, seed=9)
    reps = ma / mb
    assert (low, high) == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    diff, dlow, dhigh, _ = paired_bootstrap(a, b, n_boot=300, seed=9)
    assert (dlow, dhigh) == pytest.approx(tuple(np.quantile(ma - mb, [0.025, 0.975])))
