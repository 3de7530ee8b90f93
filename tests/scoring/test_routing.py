"""Routing a batch over workers (scoring/routing.py): shared prefixes stay on one worker."""

from __future__ import annotations

import pytest

from merge_env.scoring.parallel import route_key
from merge_env.scoring.routing import route, shared_depth
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, uniform_merge

M1 = uniform_merge("ties", ["a", "b"], density=0.5)
M2 = uniform_merge("linear", ["a", "b"])


def _key(merge: str, *slots: str) -> tuple:
    return ((merge, MERGED), *slots)


def test_shared_depth_counts_leading_entries():
    assert shared_depth(_key("m", "x", "y"), _key("m", "x", "z")) == 2
    assert shared_depth(_key("m", "x"), _key("m", "x", "z")) == 2
    assert shared_depth(_key("m", "x"), _key("n", "x")) == 0


def test_units_never_mix_merges_and_cover_the_batch_once():
    keys = [_key("m2", "x"), _key("m1", "x", "y"), _key("m2", "x", "z"), _key("m1", "x")]
    for workers in (1, 2, 3, 8):
        units = route(keys, workers)
        assert sorted(i for u in units for i in u) == [0, 1, 2, 3]
        assert all(len({keys[i][0] for i in u}) == 1 for u in units)
    assert sorted(map(sorted, route(keys, 2))) == [[0, 2], [1, 3]]  # one merge per worker


def test_one_merge_is_cut_where_its_candidates_share_least():
    # two families under one merge: (x, y, ...) and (z, ...); the cut falls between them
    keys = [_key("m", "z", "q"), _key("m", "x", "y", "1"), _key("m", "z", "r"),
            _key("m", "x", "y", "2"), _key("m", "x", "y", "3")]  # fmt: skip
    units = route(keys, 2)
    assert units == [[1, 3, 4], [0, 2]]  # trie order inside a unit, the largest unit first
    assert route(keys, 1) == [[1, 3, 4, 0, 2]]
    assert sorted(map(len, route(keys, 3))) == [1, 2, 2]
    assert sorted(map(len, route(keys, 9))) == [1] * 5  # more workers than candidates
    assert route(keys, 2) == units  # deterministic
    with pytest.raises(ValueError, match="workers"):
        route(keys, 0)


def test_route_key_spells_out_the_identity_path_and_the_shell():
    ident = tuple(Slot(MERGED, t) for t in range(3))
    assert route_key(Recipe(merge=M1), 3) == route_key(Recipe(merge=M1, path=ident), 3)
    assert route_key(Recipe(merge=M1), 3)[0] != route_key(Recipe(merge=M2), 3)[0]
    path = (Slot(BASE, 0), Slot("a", 1, 0.5))
    assert route_key(Recipe(path=path), 3)[0] != route_key(Recipe(path=path, shell="a"), 3)[0]
    assert route_key(Recipe(path=path), 3)[1:] == ((BASE, 0, 1.0), ("a", 1, 0.5))
