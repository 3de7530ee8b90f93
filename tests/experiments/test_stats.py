"""experiments.stats: intervals and rank tests against cases computed by hand or by enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from experiments import stats
from merge_env.errors import ConfigError


def test_bootstrap_ci_of_a_constant_sample_is_a_point():
    assert stats.bootstrap_ci([0.25] * 10) == (0.25, 0.25)


def test_bootstrap_ci_matches_the_hand_computed_resampling_distribution():
    # a resample of [0, 0, 0, 1] has mean k/4, k ~ Binomial(4, 1/4): P(k <= 2) = 0.949 and
    # P(k <= 3) = 0.996, so the 2.5 % quantile is 0 and the 97.5 % quantile is 3/4
    assert stats.bootstrap_ci([0.0, 0.0, 0.0, 1.0]) == (0.0, 0.75)


def test_bootstrap_ci_is_seeded_contains_the_mean_and_widens_with_confidence():
    x = np.random.default_rng(3).normal(1.0, 0.2, size=10)
    low, high = stats.bootstrap_ci(x)
    assert low < x.mean() < high
    assert stats.bootstrap_ci(x) == (low, high)  # same seed, same interval
    wide = stats.bootstrap_ci(x, confidence=0.99)
    narrow = stats.bootstrap_ci(x, confidence=0.5)
    assert wide[0] < low < narrow[0] and narrow[1] < high < wide[1]
    shifted = stats.bootstrap_ci(x + 5.0)  # the interval moves with the sample
    assert shifted == pytest.approx((low + 5.0, high + 5.0))


def test_paired_macro_ci_of_one_model_against_itself_is_zero_and_of_a_better_one_above():
    rng = np.random.default_rng(0)
    # per task 40 examples of (n_tokens, n_correct, loglik_sum)
    a = {t: [[4, int(c), -float(x)] for c, x in zip(rng.integers(0, 5, 40), rng.random(40))]
         for t in ("p", "q")}  # fmt: skip
    for metric in ("exact_match", "token_accuracy", "loglik"):
        assert stats.paired_macro_ci(a, a, metric) == (0.0, 0.0)
    # every example one more token right, half a nat more likely: a paired shift, not noise
    b = {t: [[n, min(n, c + 1), ll + 0.5] for n, c, ll in rows] for t, rows in a.items()}
    lo, hi = stats.paired_macro_ci(b, a, "loglik")
    assert lo == pytest.approx(0.125) and hi == pytest.approx(0.125)  # 0.5 nat / 4 tokens
    lo, hi = stats.paired_macro_ci(b, a, "token_accuracy")
    assert 0 < lo <= hi <= 0.25
    lo, hi = stats.paired_macro_ci(a, b, "exact_match")
    assert lo <= hi < 0 and stats.paired_macro_ci(a, b, "exact_match") == (lo, hi)  # seeded
    # the point difference sits inside: macro of per-task exact match
    em = [np.mean([r[1] == r[0] for r in v]) for v in (*a.values(), *b.values())]
    assert lo <= (em[0] + em[1]) / 2 - (em[2] + em[3]) / 2 <= hi
    with pytest.raises(ConfigError, match="tasks differ"):
        stats.paired_macro_ci(a, {"p": a["p"]}, "loglik")
    other = {t: [[n + 1, c, ll] for n, c, ll in rows] for t, rows in a.items()}
    with pytest.raises(ConfigError, match="token counts differ"):
        stats.paired_macro_ci(a, other, "loglik")  # not the same examples
    with pytest.raises(ConfigError, match="confidence"):
        stats.paired_macro_ci(a, b, "loglik", confidence=1.0)
    with pytest.raises(ConfigError, match="unknown metric"):
        stats.paired_macro_ci(a, b, "bleu")


def test_bootstrap_band_of_identical_curves_is_the_curve():
    curve = np.array([0.0, 0.1, 0.1, 0.4])
    low, high = stats.bootstrap_band(np.stack([curve] * 5))
    np.testing.assert_array_equal(low, curve)
    np.testing.assert_array_equal(high, curve)


def _u(a, b):
    return sum((x > y) + 0.5 * (x == y) for x in a for y in b)


def test_mann_whitney_p_equals_the_enumerated_exact_p():
    a, b = [1.0, 4.0, 6.0], [2.0, 3.0, 5.0, 7.0, 8.0]
    pooled = a + b
    centre = len(a) * len(b) / 2
    observed = abs(_u(a, b) - centre)
    splits = list(itertools.combinations(range(len(pooled)), len(a)))
    extreme = 0
    for idx in splits:
        aa = [pooled[i] for i in idx]
        bb = [pooled[i] for i in range(len(pooled)) if i not in idx]
        extreme += abs(_u(aa, bb) - centre) >= observed - 1e-12
    u, p, method = stats.mann_whitney(a, b)
    assert (u, method) == (_u(a, b), "exact")
    assert p == pytest.approx(extreme / len(splits))


def test_mann_whitney_of_separated_samples_by_hand():
    # U = 0; of the C(5, 2) = 10 splits one gives U = 0 and one U = 6: p = 2/10
    assert stats.mann_whitney([1.0, 2.0], [3.0, 4.0, 5.0])[1:] == (pytest.approx(0.2), "exact")


def test_permutation_test_is_exact_for_small_samples():
    # 20 splits of 6 values into 3 + 3; only the observed one and its mirror are as extreme
    p, exact = stats.permutation_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert exact and p == pytest.approx(2 / 20)
    test = stats.rank_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert test.p_mannwhitney == pytest.approx(1.0) and test.p_permutation == pytest.approx(1.0)


def test_a_monte_carlo_permutation_p_is_flagged_and_marked():
    # 11 + 11 seeds: C(22, 11) = 705,432 splits, more than are enumerated; the exact p would be
    # 2 / 705,432, and the Monte Carlo estimate floors near 1 / 10,001
    a, b = [float(i) for i in range(11)], [float(i) for i in range(20, 31)]
    p, exact = stats.permutation_p(a, b)
    assert not exact and 1 / 10_001 <= p < 1e-3
    test = vars(stats.rank_test(a, b))
    assert stats.format_p(test).endswith("†") and not test["exact_permutation"]
    small = vars(stats.rank_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]))
    assert stats.format_p(small) == "0.1; 0.1"


def test_format_ci_shows_one_seed_as_its_value_not_a_zero_width_interval():
    assert stats.format_ci(stats.summarise([0.3]), 2) == "0.30 (one seed)"
    assert stats.format_ci(stats.summarise([0.2, 0.4]), 2).startswith("0.30 [")


def test_first_reach_and_curve_on_grid():
    grid = np.arange(0, 5)
    curve = stats.curve_on_grid([(1, 0.1), (3, 0.3)], grid)
    np.testing.assert_array_equal(curve, [0.0, 0.1, 0.1, 0.3, 0.3])
    assert stats.first_reach(curve, grid, 0.2) == 3.0
    assert stats.first_reach(curve, grid, 0.5) == float("inf")


def test_no_values_is_refused():
    with pytest.raises(ConfigError, match="no values"):
        stats.bootstrap_ci([])


def test_signed_rank_pairs_by_seed_by_hand():
    # 5 positive differences of distinct size: of the 2^5 sign patterns only all-up and all-down
    # are as extreme, p = 2/32; the seed only in one sample is left out
    a = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 5.0, 9: 0.0}
    b = {s: 0.0 for s in range(5)}
    t = stats.signed_rank(a, b)
    assert (t.seeds, t.a_higher, t.b_higher, t.method) == ([0, 1, 2, 3, 4], 5, 0, "exact")
    assert t.p_signed_rank == pytest.approx(2 / 32) and t.statistic == 0.0
    # one pair down, the smallest: rank sum 1 below; patterns with W- <= 1 are 2 a side: p = 4/32
    b[0] = 1.5
    assert stats.signed_rank(a, b).p_signed_rank == pytest.approx(4 / 32)
    # a tie in |d| (or a zero) takes the normal approximation; all equal is p = 1
    assert stats.signed_rank({0: 1.0, 1: 2.0, 2: 1.0}, {0: 0.0, 1: 1.0, 2: 1.0}).method == "approx"
    assert stats.signed_rank(b, b).p_signed_rank == 1.0
    with pytest.raises(ConfigError, match="two common seeds"):
        stats.signed_rank({0: 1.0}, {0: 0.0, 1: 2.0})


def test_paired_t_by_hand():
    # differences 1, 2, 3: mean 2, standard deviation 1, t(0.975, 2 df) = 4.3027
    mean, half = stats.paired_t([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(4.302653 / 3**0.5, rel=1e-6)
    # six equal differences: no spread, a point
    assert stats.paired_t([0.05] * 6) == (pytest.approx(0.05), pytest.approx(0.0))
    # a wider confidence, a wider interval
    assert stats.paired_t([1.0, 2.0, 3.0], 0.99)[1] > half
    with pytest.raises(ConfigError, match="two differences"):
        stats.paired_t([0.1])
    with pytest.raises(ConfigError, match="confidence"):
        stats.paired_t([0.1, 0.2], 1.5)
