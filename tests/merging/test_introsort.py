"""sorted_window replays torch's CPU sort where a cut splits equal keys (merging/introsort.py)."""

import numpy as np
import pytest
import torch

from merge_env.merging.introsort import MAX_WINDOW, sorted_window
from merge_env.merging.sparsify import SparsifyContext, trim_magnitude, trim_outliers


@pytest.mark.parametrize("n", [1, 5, 16, 17, 40, 1000, 70_000, 300_001])
@pytest.mark.parametrize("descending", [False, True])
def test_window_matches_torch_sort(n, descending):
    """Whatever the cut, the tied keys at it come out in the order torch.sort leaves them."""
    rng = np.random.default_rng(n)
    for values in (1, 3, 50):
        x = torch.from_numpy(rng.integers(0, values, n).astype(np.float32) * np.float32(0.37))
        ref = torch.argsort(x, descending=descending).numpy()
        key = (-x if descending else x).numpy()
        for k in {1, n // 3 + 1, n // 2 + 1, n}:
            value = np.sort(key)[k - 1]
            first = int((key < value).sum())
            got = sorted_window(key, first, k, value)
            if got is None:  # a wide window is left to the real sort
                assert k - first > MAX_WINDOW
                continue
            assert np.array_equal(got, ref[first:k])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_trims_equal_mergekit_full_sorts_on_tied_deltas(dtype):
    """TIES' and Breadcrumbs' exact trims keep what mergekit's argsort/sort keep, on deltas
    whose magnitudes tie at the cut (small fp updates are quantised)."""
    g = torch.Generator().manual_seed(0)
    delta = (torch.randn(200_000, generator=g) * 0.002).to(dtype)
    ctx = SparsifyContext(rescale=False, generator=None, exact_ties=True)
    mag = delta.abs().float()
    k = int(0.5 * delta.numel())
    ref = torch.zeros_like(delta)
    top = torch.argsort(mag, descending=True)[:k]
    ref[top] = delta[top]
    out = delta.clone()
    trim_magnitude(out, {"density": 0.5}, ctx)
    assert torch.equal(out, ref)
    n, target = delta.numel(), int(0.4 * delta.numel())
    bottom = n - target - int(0.05 * n)
    kept = torch.sort(mag).indices[bottom : bottom + target]
    ref = torch.zeros_like(delta)
    ref[kept] = delta[kept]
    out = delta.clone()
    trim_outliers(out, {"density": 0.4, "gamma": 0.05}, ctx)
    assert torch.equal(out, ref)
