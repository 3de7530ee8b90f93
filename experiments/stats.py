"""Statistics of an agent comparison: intervals, rank tests, evaluations to reach a target.

Pure functions of NumPy arrays (one final hypervolume per search seed, or one hypervolume curve
per seed on a grid of evaluations); every resampling takes a seed, so a results.json gives the
same intervals on any machine.

* **Interval**: the percentile bootstrap of the mean (Efron & Tibshirani 1993, §13.3): resample
  the seeds with replacement, take the mean, read the 2.5 % and 97.5 % quantiles.
* **Rank test**: Mann–Whitney U, two-sided (exact null distribution when the samples have no
  ties, the normal approximation with tie correction otherwise), and an exact permutation test
  of the difference of means (every split of the pooled sample enumerated when there are at most
  ``max_exact`` of them, e.g. 184,756 for 10 + 10 seeds; Monte Carlo otherwise).
* **Paired rank test**: the Wilcoxon signed-rank test, two-sided, of the per-seed differences of
  two samples whose runs are paired by search seed (common random numbers: in PPO's ablations a
  variant and full share the seed's pool, proposals and offline phase, and differ from the first
  online update on). Exact null distribution when no difference is zero and no two are tied in
  size, the normal approximation otherwise (zeros dropped). Where the pairing holds it is the
  design's test, since it removes the seed-to-seed spread both runs share.
* **Paired t interval**: the mean of per-seed differences with its Student t interval, for
  a zoo study's variant against its reference on the same training seeds.
* **Evaluations to reach**: the first evaluation count at which a curve reaches a target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import comb
from typing import Any

import numpy as np
from scipy import stats as sps

from merge_env.errors import ConfigError
from merge_env.scoring.evaluate import metric_of_rows

N_RESAMPLES = 10_000
CONFIDENCE = 0.95


def _sample(values: Sequence[float] | np.ndarray, name: str = "sample") -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if x.size == 0:
        raise ConfigError(f"{name}: no values (a statistic needs at least one seed)")
    if not np.isfinite(x).all():
        raise ConfigError(f"{name}: non-finite values {x[~np.isfinite(x)].tolist()}")
    return x


def _resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) counts of each seed in a bootstrap resample, divided by n."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    counts = np.zeros((n_resamples, n))
    np.add.at(counts, (np.arange(n_resamples)[:, None], idx), 1.0)
    return counts / n


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile-bootstrap ``confidence`` interval (low, high) of the mean of ``values``."""
    x = _sample(values)
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    means = _resample_weights(x.size, n_resamples, seed) @ x
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    # a resampled mean is a convex combination of the values: clip float round-off
    return float(max(low, x.min())), float(min(high, x.max()))


def bootstrap_band(
    curves: np.ndarray,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile-bootstrap band (low, high) of the mean curve; ``curves`` is
    (seeds, grid). Seeds are resampled whole, so one resample's curve is a mean of real curves."""
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.shape[0] == 0:
        raise ConfigError(f"curves: need a (seeds, grid) array, got shape {c.shape}")
    means = _resample_weights(c.shape[0], n_resamples, seed) @ c
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha], axis=0)
    return np.maximum(low, c.min(0)), np.minimum(high, c.max(0))


def paired_macro_ci(
    a: Mapping[str, Sequence[Sequence[float]]],
    b: Mapping[str, Sequence[Sequence[float]]],
    metric: str,
    confidence: float = CONFIDENCE,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float]:
    """The percentile-bootstrap interval of macro(a) - macro(b), two models scored on the same
    examples: ``a`` and ``b`` map each task to per-example rows (n_tokens, n_correct, loglik_sum).
    Each task's examples are resampled with replacement, the same draw for both models (paired),
    and the macro is the mean of the tasks' ``metric``. Examples are resampled one by one: where
    they cluster (passages of a few documents), the interval is narrower than a resampling of the
    clusters would give."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    if sorted(a) != sorted(b) or not a:
        raise ConfigError(f"paired_macro_ci: tasks differ or are empty: {sorted(a)} / {sorted(b)}")
    rng = np.random.default_rng(seed)
    diffs = np.zeros(n_resamples)
    for task in sorted(a):
        x, y = np.asarray(a[task], dtype=float), np.asarray(b[task], dtype=float)
        if x.shape != y.shape or x.ndim != 2 or x.shape[1] != 3 or not len(x):
            raise ConfigError(f"paired_macro_ci: task {task!r}: rows {x.shape} / {y.shape}")
        if not np.array_equal(x[:, 0], y[:, 0]):  # the same examples have the same token counts
            raise ConfigError(f"paired_macro_ci: task {task!r}: the rows' token counts differ, "
                              "so they are not the same examples")  # fmt: skip
        idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
        diffs += (metric_of_rows(x[idx], metric) - metric_of_rows(y[idx], metric)) / len(a)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return float(low), float(high)


@dataclass(frozen=True)
class RankTest:
    """Mann–Whitney U of ``a`` against ``b`` (two-sided) and the permutation test's p."""

    u: float  # U of ``a``: pairs (a_i, b_j) with a_i > b_j, ties counting one half
    p_mannwhitney: float
    method: str  # "exact" or "asymptotic"
    p_permutation: float
    exact_permutation: bool


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, str]:
    """(U of ``a``, two-sided p, method): exact when no value is tied, asymptotic otherwise."""
    x, y = _sample(a, "a"), _sample(b, "b")
    tied = np.unique(np.concatenate([x, y])).size < x.size + y.size
    method = "asymptotic" if tied else "exact"
    res = sps.mannwhitneyu(x, y, alternative="two-sided", method=method)
    return float(res.statistic), float(min(1.0, res.pvalue)), method


def permutation_p(
    a: Sequence[float],
    b: Sequence[float],
    max_exact: int = 200_000,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> tuple[float, bool]:
    """(two-sided p of the difference of means, whether every split was enumerated)."""
    x, y = _sample(a, "a"), _sample(b, "b")
    exact = comb(x.size + y.size, x.size) <= max_exact
    res = sps.permutation_test(
        (x, y), lambda u, v, axis: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="independent", alternative="two-sided", vectorized=True,
        n_resamples=np.inf if exact else n_resamples, rng=np.random.default_rng(seed),
    )  # fmt: skip
    return float(min(1.0, res.pvalue)), exact


@dataclass(frozen=True)
class PairedTest:
    """Wilcoxon signed-rank test of ``a - b`` over the seeds both samples ran."""

    seeds: list[int]  # the common seeds, in order
    a_higher: int  # pairs where ``a`` is higher
    b_higher: int
    statistic: float  # scipy's: the smaller of the two signed-rank sums
    p_signed_rank: float  # two-sided
    method: str  # "exact" | "approx"


def signed_rank(a: Mapping[int, float], b: Mapping[int, float]) -> PairedTest:
    """The paired rank test of ``a`` against ``b`` (each: search seed -> value) over their common
    seeds. ConfigError when fewer than two seeds are common; p = 1 when every pair is equal."""
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        raise ConfigError(f"a paired test needs two common seeds, got {seeds}")
    d = _sample([float(a[s]) - float(b[s]) for s in seeds], "paired differences")
    up, down = int((d > 0).sum()), int((d < 0).sum())
    if up + down == 0:
        return PairedTest(seeds, 0, 0, 0.0, 1.0, "exact")
    method = "exact" if up + down == d.size and np.unique(np.abs(d)).size == d.size else "approx"
    res = sps.wilcoxon(d, alternative="two-sided", method=method)
    return PairedTest(seeds, up, down, float(res.statistic), float(min(1.0, res.pvalue)), method)


def paired_t(diffs: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The mean of paired differences and the half-width of its Student t ``confidence``
    interval (``n - 1`` degrees of freedom): a study's variant minus its reference, one
    difference per training seed. ConfigError for fewer than two differences."""
    d = _sample(diffs, "paired differences")
    if d.size < 2:
        raise ConfigError(f"a paired t interval needs two differences, got {d.size}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence: must be in (0, 1), got {confidence}")
    quantile = float(sps.t.ppf(0.5 + confidence / 2, d.size - 1))
    return float(d.mean()), quantile * float(d.std(ddof=1)) / d.size**0.5


def rank_test(a: Sequence[float], b: Sequence[float], seed: int = 0) -> RankTest:
    """Mann–Whitney U and the permutation test of sample ``a`` against sample ``b``."""
    u, p, method = mann_whitney(a, b)
    p_perm, exact = permutation_p(a, b, seed=seed)
    return RankTest(u, p, method, p_perm, exact)


def first_reach(curve: np.ndarray, grid: np.ndarray, target: float) -> float:
    """The first evaluation count of ``grid`` at which ``curve`` reaches ``target`` (inf if never)."""
    hit = np.flatnonzero(np.asarray(curve) >= target - 1e-12)
    return float(grid[hit[0]]) if len(hit) else float("inf")


def curve_on_grid(curve: Sequence[Sequence[float]], grid: np.ndarray) -> np.ndarray:
    """The hypervolume reached by each evaluation count of ``grid`` (a step function of the
    (evaluations, hypervolume) points of one run's curve)."""
    out = np.zeros(len(grid))
    for evals, hv in curve:
        out[grid >= evals] = np.maximum(out[grid >= evals], hv)
    return out


@dataclass(frozen=True)
class Summary:
    """Mean and bootstrap interval of one agent's final hypervolumes over seeds."""

    n: int
    mean: float
    low: float
    high: float


def summarise(values: Sequence[float], seed: int = 0) -> Summary:
    """n, mean and 95 % percentile-bootstrap interval of ``values``."""
    x = _sample(values)
    low, high = bootstrap_ci(x, seed=seed)
    return Summary(int(x.size), float(x.mean()), low, high)


def format_ci(s: Summary | Mapping[str, float], digits: int = 5) -> str:
    """``mean [low, high]`` of a Summary (or its ``vars``), ``digits`` decimals; one seed's value
    alone, marked, since its zero-width interval would read as certainty."""
    d = vars(s) if isinstance(s, Summary) else s
    if d.get("n") == 1:
        return f"{d['mean']:.{digits}f} (one seed)"
    return f"{d['mean']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def format_p(test: Mapping[str, Any]) -> str:
    """``p_mannwhitney; p_permutation`` of a ``RankTest``'s ``vars``; a permutation p from
    Monte Carlo resamples (too many splits to enumerate) is marked with a dagger."""
    mc = "" if test.get("exact_permutation", True) else "†"
    return f"{test['p_mannwhitney']:.3g}; {test['p_permutation']:.3g}{mc}"
