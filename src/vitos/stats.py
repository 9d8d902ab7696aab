"""Small, dependency-light statistics for reporting scores: intervals and paired tests.

Everything here is a pure function of its arguments (the bootstrap is deterministic given `seed`) and uses
only the standard library and numpy; scipy is not a dependency. Formulas are written out in each docstring
so a reader can check a number by hand.

API
---
* `wilson_interval(correct, n, z=1.959964)` -> (low, high): Wilson score interval of a proportion.
* `mcnemar_exact(b, c)` -> p: two-sided exact McNemar test on the discordant counts of two paired runs.
* `paired_bootstrap(a, b, stat=mean_difference, n_boot=2000, seed=0, level=0.95)`
  -> (observed, ci_low, ci_high, p): paired percentile bootstrap of mean(a) - mean(b) (or any `stat`).
* `paired_bootstrap_ratio(a, b, n_boot=2000, seed=0, level=0.95)` -> (ratio, ci_low, ci_high, p):
  the same for the ratio mean(a) / mean(b) (a "relative performance"), tested against ratio = 1.
* `bootstrap_replicate_means(a, b, n_boot=2000, seed=0)` -> (means_a, means_b): the per-replicate means of
  the same paired resamples (for statistics over several benchmarks, resampled per benchmark).
* `mean_ci(values, level=0.95)` -> (mean, low, high): Student-t interval of a mean (e.g. over seeds).
* `t_quantile(q, df)`: quantile of Student's t, computed (not tabulated) from the regularised incomplete
  beta function by bisection; `student_t_cdf(t, df)` is its CDF.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "wilson_interval",
    "mcnemar_exact",
    "mean_difference",
    "mean_ratio",
    "paired_bootstrap",
    "paired_bootstrap_ratio",
    "bootstrap_replicate_means",
    "mean_ci",
    "t_quantile",
    "student_t_cdf",
    "Z95",
]

Z95 = 1.959964
"""The standard normal 0.975 quantile (two-sided 95 %)."""


# --------------------------------------------------------------------------------------------------
# proportions
# --------------------------------------------------------------------------------------------------


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion p_hat = correct / n.

    centre    = (p_hat + z^2 / (2n)) / (1 + z^2 / n)
    halfwidth = z / (1 + z^2 / n) * sqrt(p_hat (1 - p_hat) / n + z^2 / (4 n^2))
    interval  = (centre - halfwidth, centre + halfwidth), clipped to [0, 1] (exactly 0 / 1 at 0 / n correct).

    Example: 8 / 10 -> (0.4902, 0.9433). `n == 0` -> (0.0, 1.0) (nothing is known).
    """
    if n < 0 or correct < 0 or correct > n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At p_hat = 0 (or 1) the lower (upper) end is exactly 0 (1); avoid rounding to 1e-17 / 0.9999999999999999.
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts of two paired runs A and B.

    b = questions A got right and B got wrong, c = A wrong and B right. Under H0 (equal accuracy) each
    discordant question is A's with probability 1/2, so with X ~ Binomial(b + c, 1/2):

        p = min(1, 2 * P(X <= min(b, c))) = min(1, 2 * sum_{k=0}^{min(b,c)} C(b+c, k) / 2^(b+c))

    Examples: b=1, c=6 -> 0.125; b=0, c=5 -> 0.0625. b + c == 0 -> 1.0. Computed in exact integer
    arithmetic (one correctly rounded division at the end).
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


# --------------------------------------------------------------------------------------------------
# paired bootstrap
# --------------------------------------------------------------------------------------------------


def mean_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mean(a) - mean(b) along the last axis (the default statistic of `paired_bootstrap`)."""
    return a.mean(axis=-1) - b.mean(axis=-1)


def mean_ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """mean(a) / mean(b) along the last axis; nan where mean(b) == 0."""
    num = a.mean(axis=-1)
    den = b.mean(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.nan, num / np.where(den == 0, 1.0, den))


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a_arr = np.asarray(a, dtype=np.float64)
    b_arr = np.asarray(b, dtype=np.float64)
    if a_arr.ndim != 1 or b_arr.shape != a_arr.shape:
        raise ValueError(f"paired vectors must be 1-D and of equal length, got {a_arr.shape} and {b_arr.shape}")
    if a_arr.size == 0:
        raise ValueError("paired bootstrap needs at least one question")
    return a_arr, b_arr


def _bootstrap_replicates(
    a: np.ndarray,
    b: np.ndarray,
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray],
    n_boot: int,
    seed: int,
    width: int | None = None,
) -> np.ndarray:
    """`n_boot` values of `stat` on paired resamples (the same question indices for a and b); `width` =
    how many values `stat` returns per replicate (None: one)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = a.size
    out = np.empty(n_boot if width is None else (n_boot, width), dtype=np.float64)
    chunk = max(1, min(n_boot, 4_000_000 // max(n, 1)))  # bound memory to ~32 MB of indices
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[start:stop] = stat(a[idx], b[idx])
    return out


def _percentile_ci(reps: np.ndarray, level: float) -> tuple[float, float]:
    finite = reps[np.isfinite(reps)]
    if finite.size == 0:
        return math.nan, math.nan
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _centred_p(reps: np.ndarray, observed: float, null: float) -> float:
    """(1 + #{|rep - observed| >= |observed - null|}) / (1 + B), over the finite replicates."""
    finite = reps[np.isfinite(reps)]
    if not math.isfinite(observed) or finite.size == 0:
        return math.nan
    extreme = np.abs(finite - observed) >= abs(observed - null) - 1e-12
    return float((1 + int(extreme.sum())) / (1 + finite.size))


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    stat: Callable[[np.ndarray, np.ndarray], np.ndarray] = mean_difference,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    null: float = 0.0,
) -> tuple[float, float, float, float]:
    """Paired bootstrap of `stat(a, b)` (default mean(a) - mean(b)) for per-question scores of two runs.

    `a[i]` and `b[i]` are the two runs' scores (usually 0/1) on the same question i. Each replicate draws n
    question indices with replacement (numpy `default_rng(seed)`, so the result is deterministic given
    the seed) and applies `stat` to both runs' values at those indices: the pairing is kept.
    `stat(A, B)` must reduce the LAST axis (it receives arrays of shape (k, n)).

    Returns (observed, ci_low, ci_high, p):
    * observed = stat(a, b) on the full data;
    * [ci_low, ci_high] = the (1-level)/2 and (1+level)/2 percentiles of the replicates (percentile CI);
    * p = two-sided p-value of H0 stat = `null`, by the centred bootstrap (replicates shifted so they
      satisfy H0): p = (1 + #{|T*_i - T| >= |T - null|}) / (1 + n_boot).
    Identical vectors give (0, 0, 0, 1.0).
    """
    a_arr, b_arr = _paired_arrays(a, b)
    observed = float(stat(a_arr[None, :], b_arr[None, :])[0])
    reps = _bootstrap_replicates(a_arr, b_arr, stat, n_boot, seed)
    low, high = _percentile_ci(reps, level)
    return observed, low, high, _centred_p(reps, observed, null)


def paired_bootstrap_ratio(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float, float]:
    """Paired bootstrap of the ratio R = mean(a) / mean(b) ("relative performance" of run a over run b).

    Resampling as in `paired_bootstrap`. The CI is the percentile interval of the replicate ratios
    (replicates with mean(b*) = 0 are dropped). The p-value tests H0 R = 1 on the log scale, where the
    centred bootstrap is symmetric: p = (1 + #{|log R*_i - log R| >= |log R|}) / (1 + #finite replicates).
    mean(b) == 0 -> ratio nan (and nan CI / p). Identical vectors give (1, 1, 1, 1.0).
    """
    a_arr, b_arr = _paired_arrays(a, b)
    observed = float(mean_ratio(a_arr[None, :], b_arr[None, :])[0])
    reps = _bootstrap_replicates(a_arr, b_arr, mean_ratio, n_boot, seed)
    if not math.isfinite(observed):
        return observed, math.nan, math.nan, math.nan
    low, high = _percentile_ci(reps, level)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_reps = np.log(reps)
    log_obs = math.log(observed) if observed > 0 else -math.inf
    if not math.isfinite(log_obs):
        return observed, low, high, math.nan
    return observed, low, high, _centred_p(log_reps, log_obs, 0.0)


def bootstrap_replicate_means(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(mean(a*), mean(b*)) of each of `n_boot` paired resamples, shape (n_boot,) each.

    The resamples are exactly those `paired_bootstrap` / `paired_bootstrap_ratio` draw for the same
    `seed`, so a statistic built from them (e.g. a mean of per-benchmark ratios, each benchmark resampled
    on its own) agrees replicate by replicate with the per-benchmark intervals.
    """
    a_arr, b_arr = _paired_arrays(a, b)
    both = np.stack([a_arr, b_arr])  # (2, n): one resample of the columns applies to both rows
    reps = _bootstrap_replicates(both[0], both[1], lambda x, y: np.stack([x.mean(-1), y.mean(-1)], -1), n_boot,
                                 seed, width=2)  # fmt: skip
    return reps[:, 0], reps[:, 1]


# --------------------------------------------------------------------------------------------------
# Student t: CDF from the regularised incomplete beta function, quantile by bisection
# --------------------------------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes `betacf`)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b) = B(x; a, b) / B(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t > 0."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (df > 0), by bisection on `student_t_cdf` to ~1e-12.

    Computed, not tabulated: t_quantile(0.975, 1) = 12.7062, (0.975, 2) = 4.3027, (0.975, 4) = 2.7764,
    (0.975, 30) = 2.0423.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < q:
        hi *= 2.0
        if hi > 1e12:
            return math.inf
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if student_t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Student-t interval of a mean (e.g. a score over seeds): (mean, low, high).

    mean ± t_{(1+level)/2, n-1} * s / sqrt(n), with s the sample standard deviation (ddof = 1) and the t
    quantile from `t_quantile`. Example: [1, 2, 3] -> 2 ± 4.3027 / sqrt(3) = (2, -0.4841, 4.4841).
    One value -> (value, nan, nan) (no spread can be estimated); no value -> ValueError.
    """
    x = [float(v) for v in values]
    n = len(x)
    if n == 0:
        raise ValueError("mean_ci needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    mean = math.fsum(x) / n
    if n == 1:
        return mean, math.nan, math.nan
    s = math.sqrt(math.fsum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_quantile((1.0 + level) / 2.0, n - 1) * s / math.sqrt(n)
    return mean, mean - half, mean + half
