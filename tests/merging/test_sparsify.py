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


@pytest.mark.parametrize("method", ["dare_linear", "dare_ties"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kept_dare_draws_give_the_drawn_merge_bit_for_bit(method, dtype):
    from merge_env.merging.methods.registry import merge_tensors
    from merge_env.merging.sparsify import DARE_DRAWS

    torch.manual_seed(0)
    base = torch.randn(300, 70).to(dtype)
    experts = [(base + 0.1 * torch.randn(300, 70)).to(dtype) for _ in range(3)]

    def merged(weights, cache_bytes):
        DARE_DRAWS.max_bytes = cache_bytes
        gen = torch.Generator().manual_seed(7)
        params = [{"weight": w, "density": d} for w, d in zip(weights, (0.5, 0.3, 0.5))]
        out = merge_tensors(method, experts, base, params, {"rescale": 1.0, "normalize": 1.0},
                            generator=gen)  # fmt: skip
        return out, gen.get_state()

    old = DARE_DRAWS.max_bytes
    try:
        DARE_DRAWS.clear()
        misses0 = DARE_DRAWS.misses
        for weights in ([0.2, 0.3, 0.5], [0.5, 0.1, 0.4], [0.2, 0.3, 0.5]):
            want, want_state = merged(weights, 0)  # drawn every time
            hits = DARE_DRAWS.hits
            got, state = merged(weights, 1 << 20)
            assert torch.equal(got, want)
            assert torch.equal(state, want_state)  # the generator ends where the draws leave it
        # the first merge drew and kept its three masks; every later one found them
        assert DARE_DRAWS.misses - misses0 == 3 and DARE_DRAWS.hits - hits == 3
        assert 0 < DARE_DRAWS.bytes <= 3 * (300 * 70 // 8 + 1 + 5056)  # bits + generator state
    finally:
        DARE_DRAWS.max_bytes = old
        DARE_DRAWS.clear()


def test_dare_draws_stay_within_their_bound():
    from merge_env.merging.sparsify import DrawCache

    cache = DrawCache(max_bytes=2 * (125 + 5056))  # two draws of 1,000 entries, with states
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(1000)
    masks, states = [], []
    for _ in range(4):
        states.append(gen.get_state())
        masks.append(cache.bernoulli(flat, 0.5, torch.float32, gen))
    end = gen.get_state()
    assert cache.bytes <= cache.max_bytes and len(cache) == 2 and cache.misses == 4
    gen.set_state(states[2])  # the last two draws are kept
    assert all(torch.equal(cache.bernoulli(flat, 0.5, torch.float32, gen), m) for m in masks[2:])
    assert cache.hits == 2 and torch.equal(gen.get_state(), end)
    gen.set_state(states[0])  # the first two were evicted: drawn again, the same
    assert torch.equal(cache.bernoulli(flat, 0.5, torch.float32, gen), masks[0])
    assert cache.misses == 5
