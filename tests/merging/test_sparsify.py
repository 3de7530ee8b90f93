"""Sparsifiers of task vectors (TIES trim, Breadcrumbs, DARE) on hand-made deltas."""

from __future__ import annotations

import pytest
import torch

from merge_env.merging.sparsify import SparsifyContext, drop_random, trim_magnitude, trim_outliers

PLAIN = SparsifyContext(rescale=False, generator=None, exact_ties=False)


def test_trim_magnitude_keeps_the_top_density_by_magnitude():
    flat = torch.tensor([0.1, -5.0, 0.3, 2.0, -0.2, 4.0, 0.0, -1.0])
    trim_magnitude(flat, {"density": 0.5}, PLAIN)
    assert flat.tolist() == [0.0, -5.0, 0.0, 2.0, 0.0, 4.0, 0.0, -1.0]


def test_trim_magnitude_tie_at_the_cut_keeps_lower_positions():
    flat = torch.tensor([1.0, -1.0, 1.0, 1.0, 3.0])
    trim_magnitude(flat, {"density": 0.4}, PLAIN)  # k = 2: 3.0 and the first of the tied ones
    assert flat.tolist() == [1.0, 0.0, 0.0, 0.0, 3.0]


def test_rescale_restores_the_l1_norm():
    flat = torch.tensor([1.0, -2.0, 3.0, -4.0])
    before = flat.abs().sum()
    trim_magnitude(flat, {"density": 0.5}, SparsifyContext(True, None, False))
    assert torch.count_nonzero(flat) == 2
    assert flat.abs().sum() == pytest.approx(float(before))


def test_trim_outliers_drops_the_largest_and_the_smallest():
    flat = torch.arange(1.0, 11.0)  # magnitudes 1..10
    trim_outliers(flat, {"density": 0.5, "gamma": 0.2}, PLAIN)
    # keep 5: drop the top 2 (9, 10) and the bottom 3 (1, 2, 3)
    assert flat.tolist() == [0.0, 0.0, 0.0, 4.0, 5.0, 6.0, 7.0, 8.0, 0.0, 0.0]


def test_drop_random_is_seeded_and_keeps_about_density():
    def run(seed):
        flat = torch.ones(20_000)
        drop_random(
            flat,
            {"density": 0.3},
            SparsifyContext(False, torch.Generator().manual_seed(seed), False),
        )
        return flat

    a, b, c = run(0), run(0), run(1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert abs(float(a.mean()) - 0.3) < 0.02
    assert set(a.unique().tolist()) <= {0.0, 1.0}


def test_density_one_and_zero():
    flat = torch.tensor([1.0, -2.0, 3.0])
    trim_magnitude(flat, {"density": 1.0}, PLAIN)
    assert flat.tolist() == [1.0, -2.0, 3.0]
    trim_magnitude(flat, {"density": 0.0}, PLAIN)
    assert flat.tolist() == [0.0, 0.0, 0.0]
