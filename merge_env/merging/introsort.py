"""Where torch's unstable CPU sort puts equal keys, found without the full sort.

mergekit ranks magnitudes with ``torch.argsort`` (TIES) or ``torch.sort`` (Model Breadcrumbs),
which on the CPU run ``std::sort`` (libstdc++'s introsort) over (key, index) pairs comparing keys
only. Where a density cut splits a group of equal keys, which of them survive is whatever that
sort leaves on each side of the cut. ``sorted_window`` replays the introsort step for step, but
only in the ranges that hold the wanted positions (as quickselect does), so it costs a few
passes over the keys instead of n log n comparisons:

* each partition takes the median of (first+1, middle, last-1) to the front and runs the
  unguarded Hoare partition; its swaps pair the i-th key >= pivot from the left with the i-th
  key <= pivot from the right, so one partition is a few vectorised passes;
* ranges of at most 16 keys are left to the final insertion sort, which is stable and never
  moves a key across a partition boundary: each such range ends up stably sorted;
* a range that exhausts the depth limit would go to heapsort, and a wide window meets many
  small ranges: then we give up (None) and the caller sorts for real.

Keys must not hold NaN (torch's comparator orders NaN apart); the caller checks.
"""

from __future__ import annotations

import numpy as np

THRESHOLD = 16  # libstdc++'s _S_threshold: smaller ranges are left to insertion sort
# Replaying costs a partition per small range that meets the window: a window wider than this
# is cheaper to sort for real (None)
MAX_WINDOW = 1 << 12


def _moved(pos: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``pos`` with each entry equal to some src[j] replaced by dst[j] (``src`` ascending)."""
    j = np.searchsorted(src, pos).clip(max=len(src) - 1)
    return np.where(src[j] == pos, dst[j], pos)


class _Tracked:
    """The keys equal to the cut's value (the only ones whose original positions matter):
    their original positions, and where they are now, followed through every swap."""

    def __init__(self, key: np.ndarray, value: np.floating) -> None:
        self.origin = np.flatnonzero(key == value)
        self.pos = self.origin.copy()

    def swap(self, a: np.ndarray, b: np.ndarray) -> None:
        """Positions a[j] and b[j] exchange their keys (``a`` ascending, ``b`` descending)."""
        if len(a) and len(self.pos):
            to_b, to_a = _moved(self.pos, a, b), _moved(self.pos, b[::-1], a[::-1])
            self.pos = np.where(to_b != self.pos, to_b, to_a)


def _median_to_front(key: np.ndarray, first: int, last: int, tracked: _Tracked) -> None:
    """libstdc++'s __move_median_to_first(first, first + 1, mid, last - 1) with ``<``."""
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    ka, kb, kc = key[a], key[b], key[c]
    if ka < kb:
        m = b if kb < kc else (c if ka < kc else a)
    else:
        m = a if ka < kc else (c if kb < kc else b)
    key[first], key[m] = key[m], key[first]
    tracked.swap(np.array([first]), np.array([m]))


def _partition(key: np.ndarray, first: int, last: int, window: tuple[int, int],
               tracked: _Tracked) -> int:  # fmt: skip
    """Partition key[first:last] as libstdc++'s __unguarded_partition_pivot does; returns the
    cut. Keys are swapped only on the sides that overlap ``window`` (the others are dropped)."""
    _median_to_front(key, first, last, tracked)
    p, seg = key[first], key[first + 1 : last]
    # every key left of the cut ends <= p and every key right of it >= p, which bounds where
    # the left and right scans can stop: no need to list the stops beyond (and the masks and
    # index lists, the largest temporaries, are dropped as soon as they are used)
    le = seg <= p
    n_le = int(np.count_nonzero(le))
    ge = seg >= p
    start = max(len(seg) - int(np.count_nonzero(ge)) - 1, 0)
    ls = np.flatnonzero(ge[: n_le + 1])
    del ge
    rs = np.flatnonzero(le[start:])
    del le
    rs += start
    rs = rs[::-1]
    m = min(len(ls), len(rs))
    t = int(np.count_nonzero(ls[:m] < rs[:m]))  # the scans meet after t swaps
    cut = int(ls[t] if t < len(ls) and (t == 0 or ls[t] < rs[t - 1]) else rs[t - 1]) + first + 1
    left, right = ls[:t], rs[:t]
    left += first + 1  # in place: these index lists are the partition's largest temporaries
    right += first + 1
    lo, hi = window
    keep_left, keep_right = first < hi and cut > lo, cut < hi and last > lo
    if keep_left and keep_right:
        key[left], key[right] = key[right], key[left]
    elif keep_left:
        key[left] = key[right]
    elif keep_right:
        key[right] = key[left]
    tracked.swap(left, right)
    return cut


def sorted_window(
    key: np.ndarray, lo: int, hi: int, value: np.floating, *, overwrite: bool = False
) -> np.ndarray | None:
    """The original positions that ``std::sort`` of ``key`` (ascending, by key only) puts at
    sorted positions [lo, hi), in that order, where those all hold ``value`` (keys tied at a
    cut); None where introsort would turn to heapsort, or the window is wider than
    ``MAX_WINDOW``. ``key`` is left untouched unless ``overwrite`` (then it is scratch)."""
    n = len(key)
    if hi - lo > MAX_WINDOW:
        return None
    key = key if overwrite else key.copy()
    tracked = _Tracked(key, value)
    ranges = [(0, n, 2 * (n.bit_length() - 1))]  # depth limit: __lg(n) * 2
    while ranges:
        first, last, depth = ranges.pop()
        while last - first > THRESHOLD:
            if depth == 0:
                return None
            depth -= 1
            cut = _partition(key, first, last, (lo, hi), tracked)
            if cut < hi and last > lo:
                ranges.append((cut, last, depth))
            last = cut
            if not (first < hi and last > lo):
                break
        else:
            if first < hi and last > lo:  # the final insertion sort: stable within the range
                order = np.argsort(key[first:last], kind="stable")
                key[first:last] = key[first:last][order]
                rank = np.empty_like(order)
                rank[order] = np.arange(len(order))
                inside = (tracked.pos >= first) & (tracked.pos < last)
                tracked.pos[inside] = first + rank[tracked.pos[inside] - first]
    at = (tracked.pos >= lo) & (tracked.pos < hi)
    return tracked.origin[at][np.argsort(tracked.pos[at])]
