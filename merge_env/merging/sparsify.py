"""Sparsifiers of task vectors, in place on 1-D deltas, with mergekit 0.1.5's numerics.

TIES' magnitude trim, Model Breadcrumbs' outlier trim and DARE's random drop, each optionally
rescaled back to the delta's L1 norm; ``sparsify_each`` runs one over every model's delta (large
rows in parallel threads, random drops in model order so a seeded generator matches mergekit).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from merge_env.lru import ByteLRU
from merge_env.merging.introsort import sorted_window

PARALLEL_MIN_NUMEL = 1 << 16  # below this, threads cost more than they save

ParamDict = Mapping[str, float]
Params = Sequence[ParamDict]


@dataclass(frozen=True)
class SparsifyContext:
    """What every sparsifier needs besides the delta and its model's parameters."""

    rescale: bool
    generator: torch.Generator | None
    exact_ties: bool


def _magnitudes(flat: Tensor) -> Tensor:
    """|x| in the dtype mergekit ranks in (float32 on CPU), so equal values stay equal."""
    mag = flat.abs()
    return mag.float() if mag.device.type == "cpu" else mag


def _kth_smallest(key: Tensor, k: int) -> Tensor:
    """The k-th smallest key (1-based) as a 0-d tensor. On the CPU through numpy's select,
    which copies the keys once; torch.kthvalue would also build an int64 index per key."""
    if key.device.type != "cpu":
        return torch.kthvalue(key, k).values
    return torch.from_numpy(np.partition(key.numpy(), k - 1)[k - 1 : k]).reshape(())


def _rank_window(key: Tensor, lo: int, hi: int, exact: bool) -> Tensor | None:
    """Mask of the entries whose rank in ascending ``key`` order lies in [lo, hi).

    Entries strictly between the two cut values are in. Where a cut splits a group of equal
    non-zero keys, mergekit's unstable sort decides which survive: with ``exact`` we replay
    that sort where it matters (``merging/introsort.py``), or return None where we cannot, so
    the caller runs the sort itself; otherwise the lower positions rank first. (Tied zeros add
    nothing wherever they are kept.) ``key`` is scratch: it may come back reordered.
    """
    n = key.numel()
    keep = torch.ones_like(key, dtype=torch.bool)
    if hi <= lo:
        return keep.zero_()
    cuts = []
    if lo > 0:
        cuts.append(_kth_smallest(key, lo + 1))
        keep &= key > cuts[-1]
    if hi < n:
        cuts.append(_kth_smallest(key, hi))
        keep &= key < cuts[-1]
    for cut in cuts:  # both cuts may fall in one group of equal keys: the same assignment twice
        tied = key == cut
        first, count = int(torch.count_nonzero(key < cut)), int(torch.count_nonzero(tied))
        if lo <= first and first + count <= hi:
            keep |= tied
        elif lo < first + count and first < hi:  # the cut splits the tied entries
            if exact and cut != 0:
                if key.device.type != "cpu" or bool(torch.isnan(key).any()):
                    return None
                wlo, whi = max(lo, first), min(hi, first + count)
                last = cut is cuts[-1]  # then key is not read again: replay in it, no copy
                kept = sorted_window(key.numpy(), wlo, whi, cut.numpy(), overwrite=last)
                if kept is None:
                    return None
                keep[tied] = False
                keep[torch.from_numpy(kept)] = True
                continue
            rank = torch.arange(first, first + count, device=key.device)
            keep[tied.nonzero().view(-1)] = (rank >= lo) & (rank < hi)
    return keep


def _mask_from(indices: Tensor, like: Tensor) -> Tensor:
    """A boolean mask that is True at ``indices``."""
    keep = torch.zeros_like(like, dtype=torch.bool)
    keep[indices] = True
    return keep


def _mask_and_rescale(flat: Tensor, mask: Tensor, rescale: bool) -> None:
    """flat *= mask; with ``rescale`` restore the L1 norm, as mergekit's RescaleNorm.l1."""
    if not rescale:
        flat.mul_(mask)
        return
    before = flat.abs().sum()
    flat.mul_(mask)
    after = flat.abs().sum()
    if before >= 1e-7 and after >= 1e-7:
        flat.mul_(before / after)


def trim_magnitude(flat: Tensor, p: ParamDict, ctx: SparsifyContext) -> None:
    """TIES trim (Yadav et al. 2023, §3 step 1): keep the top ``density`` fraction by |x|."""
    density, n = p["density"], flat.numel()
    if density >= 1:
        return
    if density <= 0 or n == 0:
        flat.zero_()
        return
    k = max(1, int(density * n))
    # the top k of |x| (equal ones by position) are the ascending ranks [0, k) of -|x|; negated
    # in place (exactly), so the trim holds one magnitude tensor, not two
    key = _magnitudes(flat).neg_()
    keep = _rank_window(key, 0, k, ctx.exact_ties)
    if keep is None:  # equal magnitudes straddle the cut: let mergekit's own sort choose
        mag = _magnitudes(flat)
        keep = _mask_from(torch.argsort(mag, descending=True)[:k], mag)
    _mask_and_rescale(flat, keep, ctx.rescale)


def trim_outliers(flat: Tensor, p: ParamDict, ctx: SparsifyContext) -> None:
    """Model Breadcrumbs (Davari & Belilovsky 2023, §3): drop the top ``gamma`` and the smallest.

    ``density`` is the fraction kept; ``gamma`` the fraction of largest magnitudes removed,
    reduced when both together exceed the tensor (mergekit's magnitude_outliers).
    """
    density = p["density"]
    if density >= 1:
        return
    n = flat.numel()
    target = int(density * n)
    bottom = max(0, n - target - int(p["gamma"] * n))
    mag = _magnitudes(flat)
    keep = _rank_window(mag, bottom, bottom + target, ctx.exact_ties)
    if keep is None:
        mag = _magnitudes(flat)
        keep = _mask_from(torch.sort(mag, descending=False).indices[bottom : bottom + target], mag)
    _mask_and_rescale(flat, keep, ctx.rescale)


def drop_random(flat: Tensor, p: ParamDict, ctx: SparsifyContext) -> None:
    """DARE (Yu et al. 2023, Eq. 2): keep each entry with probability ``density``.

    With ``rescale`` the survivors are scaled back to the delta's L1 norm (mergekit 0.1.5) rather
    than by the paper's 1/density; the two agree for large tensors. Draws as mergekit does (a
    bernoulli over a full probability tensor), so a generator seeded s reproduces mergekit run
    after torch.manual_seed(s).
    """
    density = p["density"]
    if density >= 1:
        return
    # mergekit draws in float32 on CPU (no half-precision bernoulli there) except for bfloat16
    on_cpu = flat.device.type == "cpu" and flat.dtype != torch.bfloat16
    mask_dtype = torch.float32 if on_cpu else flat.dtype
    _mask_and_rescale(flat, DARE_DRAWS.bernoulli(flat, density, mask_dtype, ctx.generator),
                      ctx.rescale)  # fmt: skip


class DrawCache:
    """DARE's Bernoulli masks, kept (one bit per entry) under the generator state they start from.

    A search builds many DARE merges that differ only in their weights: the same seed, densities
    and tensors, so the same draws, which cost ~40 % of a merge (SmolLM2). A draw is looked up
    by (digest of the generator's state, size, density, dtype); a hit sets the generator to the
    state the draw left it in, so every later draw, and the mask itself, is exactly what
    ``torch.bernoulli`` gives. CPU generators only; an LRU bounded by ``max_bytes`` (0: off).
    """

    def __init__(self, max_bytes: int = 64 * 2**20) -> None:
        self._kept = ByteLRU(max_bytes, what="DARE draws")

    @property
    def max_bytes(self) -> int:
        """The bound on the bits and generator states kept (0: draws are not kept)."""
        return self._kept.max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self._kept.max_bytes = int(value)

    @property
    def bytes(self) -> int:
        """The bits and generator states kept now."""
        return self._kept.bytes

    @property
    def hits(self) -> int:
        """Draws served from the kept masks."""
        return self._kept.hits

    @property
    def misses(self) -> int:
        """Keepable draws that were drawn."""
        return self._kept.misses

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        """Drop every kept draw (the counters stay)."""
        self._kept.clear()

    def bernoulli(
        self, flat: Tensor, density: float, dtype: torch.dtype, gen: torch.Generator | None
    ) -> Tensor:
        """``torch.bernoulli`` of a ``density``-filled tensor shaped like ``flat``, drawn with
        ``gen`` (advanced exactly as the draw would)."""
        n = flat.numel()

        def draw() -> Tensor:  # the draw itself, kept or not
            return torch.bernoulli(torch.full_like(flat, density, dtype=dtype), generator=gen)

        cacheable = (gen is not None and gen.device.type == "cpu" and flat.device.type == "cpu"
                     and 0 < (n + 7) // 8 <= self.max_bytes)  # fmt: skip
        if not cacheable:
            return draw()
        state = gen.get_state()
        key = (hashlib.blake2b(state.numpy().tobytes(), digest_size=16).digest(), n,
               float(density), str(dtype))  # fmt: skip
        hit = self._kept.get(key)
        if hit is not None:
            bits, after = hit
            gen.set_state(after)
            mask = torch.from_numpy(np.unpackbits(bits, count=n))
            return mask.to(dtype).reshape(flat.shape)
        mask = draw()
        bits, after = np.packbits(mask.reshape(-1).numpy() != 0), gen.get_state()
        self._kept.put(key, (bits, after), bits.nbytes + after.numel())
        return mask


# the process's DARE draws (merges built during a search share them)
DARE_DRAWS = DrawCache()


Sparsifier = Callable[[Tensor, ParamDict, SparsifyContext], None]


def sparsify_each(
    sparsify: Sparsifier, deltas: Tensor, params: Params, ctx: SparsifyContext
) -> None:
    """Sparsify every model's delta row in place.

    torch sorts and selects on one core, so large rows run in parallel threads; random drops
    stay sequential so the generator's draws keep mergekit's model order.
    """
    jobs = [partial(sparsify, deltas[i].view(-1), p, ctx) for i, p in enumerate(params)]
    workers = min(len(jobs), torch.get_num_threads())
    if sparsify is drop_random or workers < 2 or deltas[0].numel() < PARALLEL_MIN_NUMEL:
        for job in jobs:
            job()
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
