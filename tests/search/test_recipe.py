"""Recipes: canonical JSON, stable hash, YAML round trip, validation, mergekit export."""

from __future__ import annotations

import pytest
import yaml

from merge_env.errors import RecipeError
from merge_env.merging.arch import FAMILIES
from merge_env.search.mergekit_export import mergekit_export, to_mergekit
from merge_env.search.recipe import MERGED, Recipe, Slot, param_merge


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


PATHS = {"base": "/m/base", "add": "/m/add", "rev": "/m/rev"}
LLAMA_OUT = ("self_attn.o_proj", "mlp.down_proj")


def _scaled(c: float, filters: tuple[str, ...]) -> dict:
    return {"scale": [*({"filter": f, "value": c} for f in filters), {"value": 1.0}]}


def test_mergekit_export_is_mergekit_multi_stages():
    export = mergekit_export(_recipe(), PATHS, num_layers=2, residual_out=LLAMA_OUT)
    merge, passthrough = export.stages
    assert merge == {
        "name": MERGED,  # referenced by name from the passthrough; no MergeGym-only keys
        "merge_method": "dare_ties",
        "base_model": "/m/base",
        "models": [
            {"model": "/m/add", "parameters": {"weight": 0.5, "density": 0.5}},
            {"model": "/m/rev", "parameters": {"weight": 0.25, "density": 0.5}},
        ],
    }
    filters = (".self_attn.o_proj.", ".mlp.down_proj.")
    assert passthrough == {
        "merge_method": "passthrough",
        "base_model": MERGED,
        "slices": [
            {"sources": [{"model": MERGED, "layer_range": [0, 1]}]},
            {"sources": [{"model": "/m/add", "layer_range": [1, 2],
                          "parameters": _scaled(1.25, filters)}]},
            {"sources": [{"model": "/m/rev", "layer_range": [1, 2],
                          "parameters": _scaled(0.5, filters)}]},
            {"sources": [{"model": "/m/base", "layer_range": [1, 2]}]},
            # the last slot is the base's: a zero-layer slice gives the merge's norm and head
            {"sources": [{"model": MERGED, "layer_range": [0, 0]}]},
        ],
        "dtype": "float32",
    }  # fmt: skip
    assert export.tool == "mergekit-multi" and export.suffix == ".mergekit-multi.yaml"
    assert export.command("p.yaml", "out") == (
        "mergekit-multi p.yaml --intermediate-dir ./out.stages --out-path out"
    )
    text = export.text("p.yaml", "out", header=["preference [1.0]"])
    assert text.startswith("# preference [1.0]\n# run: mergekit-multi p.yaml ")
    assert list(yaml.safe_load_all(text)) == list(export.stages)
    # DARE's random drop cannot be reproduced by mergekit: the file says so
    assert len(export.notes) == 1 and "random" in export.notes[0]
    assert "NOTE: dare_ties drops entries at random" in text


def test_mergekit_export_single_stage_runs_with_mergekit_yaml():
    merge = param_merge("ties", {"add": 0.5, "rev": 0.25}, density=0.5, seed=3)
    export = mergekit_export(Recipe(merge=merge), PATHS, num_layers=2)
    assert export.tool == "mergekit-yaml" and export.suffix == ".mergekit.yaml"
    assert export.notes == ()  # deterministic: mergekit gives MergeGym's tensors
    (stage,) = export.stages
    assert "name" not in stage and "seed" not in stage
    text = export.text("p.yaml", "out")
    assert yaml.safe_load(text) == stage  # one YAML document, as mergekit-yaml reads
    assert "# run: mergekit-yaml p.yaml out\n" in text
    single = mergekit_export(Recipe.single("add"), PATHS, num_layers=2)
    assert single.stages == (
        {"merge_method": "passthrough",
         "slices": [{"sources": [{"model": "/m/add", "layer_range": [0, 2]}]}]},
    )  # fmt: skip


def test_mergekit_export_scales_use_the_family_names():
    recipe = Recipe(path=(Slot("add", 0, 2.0), Slot("base", 1)), shell="base")
    export = mergekit_export(recipe, PATHS, 2, residual_out=FAMILIES["gpt2"].residual_out)
    first = export.stages[0]["slices"][1]["sources"][0]  # after the base's zero-layer slice
    assert first["parameters"] == _scaled(2.0, (".attn.c_proj.", ".mlp.c_proj."))
    with pytest.raises(RecipeError, match="residual-branch"):
        to_mergekit(recipe, PATHS, 2)  # scales without the family's names are never dropped


def test_mergekit_export_leaves_out_an_unused_merge():
    merge = param_merge("ties", {"add": 0.5}, density=0.5)
    recipe = Recipe(merge=merge, path=(Slot("add", 0), Slot("base", 1)), shell="base")
    (stage,) = to_mergekit(recipe, PATHS, 2)
    assert stage["merge_method"] == "passthrough"


def test_mergekit_export_names_a_missing_checkpoint():
    with pytest.raises(RecipeError, match="no checkpoint path for source 'rev'"):
        to_mergekit(_recipe(), {"base": "/m/base", "add": "/m/add"}, 2, LLAMA_OUT)
