"""Recipes: canonical JSON, stable hash, YAML round trip, validation, mergekit export."""

from __future__ import annotations

import pytest

from merge_env.errors import RecipeError
from merge_env.recipe import MERGED, Recipe, Slot, param_merge


def _recipe() -> Recipe:
    merge = param_merge("dare_ties", {"add": 0.5, "rev": 0.25}, density=0.5)
    path = (Slot(MERGED, 0), Slot("add", 1, 1.25), Slot("rev", 1, 0.5), Slot("base", 1))
    return Recipe(merge=merge, path=path)


def test_hash_is_stable_and_canonical():
    a, b = _recipe(), _recipe()
    assert a.hash == b.hash and len(a.hash) == 16
    assert a.canonical_json() == Recipe.from_dict(a.to_dict()).canonical_json()
    tiny = Recipe(merge=a.merge, path=(Slot(MERGED, 0, 1.0 + 1e-9),) + a.path[1:])
    assert tiny.hash == Recipe(merge=a.merge, path=(Slot(MERGED, 0),) + a.path[1:]).hash
    other = Recipe(merge=a.merge, path=a.path[:-1])
    assert other.hash != a.hash


def test_yaml_round_trip(tmp_path):
    r = _recipe()
    again = Recipe.from_yaml(r.to_yaml())
    assert again.hash == r.hash and again.path == r.path
    f = tmp_path / "r.yaml"
    f.write_text(r.to_yaml())
    assert Recipe.load(f).hash == r.hash


def test_identity_and_single():
    r = Recipe(merge=_recipe().merge)
    assert r.is_identity(3) and r.resolved_path(3) == tuple(Slot(MERGED, i) for i in range(3))
    s = Recipe.single("add")
    assert s.shell_source == "add" and s.resolved_path(2) == (Slot("add", 0), Slot("add", 1))
    assert s.hash != Recipe.single("rev").hash


@pytest.mark.parametrize(
    "data, match",
    [
        ({"path": [["nope", 0, 1.0]]}, "unknown source 'nope'"),
        ({"path": [["base", 5, 1.0]]}, "layer 5 out of range"),
        ({"path": [["base", 0, float("nan")]]}, "finite"),
        ({"path": [["base", 0, 9.0]]}, r"outside \[0.0, 4.0\]"),
        ({"path": [["merged", 0, 1.0]]}, "has no merge"),
        ({"path": [{"source": "base", "layr": 0}]}, "unknown slot key"),
        ({"pth": []}, "unknown recipe key"),
        ({"path": []}, "empty"),
    ],
)
def test_bad_recipes_are_named(data, match):
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(data, where="r.yaml").validate(["base", "add"], 2, where="r.yaml")


def test_mergekit_export():
    r = _recipe()
    stages = r.to_mergekit({"base": "/m/base", "add": "/m/add", "rev": "/m/rev"}, num_layers=2)
    assert stages[0]["merge_method"] == "dare_ties"
    assert stages[0]["base_model"] == "/m/base"
    assert stages[1]["merge_method"] == "passthrough"
    slices = stages[1]["slices"]
    assert [s["sources"][0]["layer_range"] for s in slices] == [[0, 1], [1, 2], [1, 2], [1, 2]]
    assert slices[0]["sources"][0]["model"] == "./merged"
    assert "scale" in slices[1]["sources"][0]["parameters"]
    with pytest.raises(RecipeError, match="no checkpoint path for source 'rev'"):
        r.to_mergekit({"base": "/m/base", "add": "/m/add"}, num_layers=2)
