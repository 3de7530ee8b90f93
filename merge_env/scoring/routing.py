"""Routing a batch of candidates over workers so that shared path prefixes stay on one worker.

Prefix sharing (scoring/prefix.py) only saves work between candidates scored by the same
process. A parallel back-end therefore cuts a batch into *units* along its trie: candidates are
sorted by prefix key (merge first, then slot by slot), units never mix merges (different merges
share nothing, not even the merged model), and a unit larger than its share is cut where its
neighbours share the fewest slots, until there are as many units as workers. A worker then
scores a whole unit in one call.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

# a candidate's routing key: (merge, shell) first, then one entry per path slot
RouteKey = tuple[Hashable, ...]


def shared_depth(a: RouteKey, b: RouteKey) -> int:
    """How many leading entries two keys share (0: other merges, 1: only the merge, ...)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def route(keys: Sequence[RouteKey], workers: int) -> list[list[int]]:
    """Candidate indices in units: each unit one merge, in trie order; largest unit first.

    Units of one merge are split (at the boundary whose neighbours share the least, nearest the
    middle on ties) while there are fewer units than ``workers`` and some unit has two
    candidates, so that every worker has work and candidates sharing a prefix stay together.
    Deterministic: equal keys give equal units.
    """
    if workers < 1:
        raise ValueError(f"route: workers must be >= 1, got {workers}")
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    units: list[list[int]] = []
    for i in order:
        if units and shared_depth(keys[units[-1][-1]], keys[i]) > 0:
            units[-1].append(i)
        else:
            units.append([i])
    while len(units) < workers:
        big = max(range(len(units)), key=lambda u: len(units[u]), default=None)
        if big is None or len(units[big]) < 2:
            break
        unit = units[big]
        mid = len(unit) / 2
        cut = min(range(1, len(unit)),
                  key=lambda c: (shared_depth(keys[unit[c - 1]], keys[unit[c]]), abs(c - mid)))  # fmt: skip
        units[big : big + 1] = [unit[:cut], unit[cut:]]
    return sorted(units, key=len, reverse=True)


__all__ = ["RouteKey", "route", "shared_depth"]
