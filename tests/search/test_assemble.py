"""Assembly shares layers, honours scales and KV-cache slots; materialise() matches it exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from merge_env.errors import MergeError, RecipeError
from merge_env.search.assemble import ModelPool
from merge_env.search.recipe import MERGED, Recipe, Slot, param_merge


@pytest.fixture(params=["llama", "gpt2"])
def pool(request, tiny_factory):
    family = request.param
    base = tiny_factory(family, layers=3, seed=0)
    a = tiny_factory(family, like=base, seed=1, noise=0.05)
    b = tiny_factory(family, like=base, seed=2, noise=0.05)
    return ModelPool({"base": base, "a": a, "b": b})


def _mixed_recipe() -> Recipe:
    merge = param_merge("ties", {"a": 0.6, "b": 0.4}, density=0.5)
    path = (
        Slot(MERGED, 0), Slot("a", 1, 1.25), Slot("a", 1, 0.5), Slot("b", 2),
        Slot("base", 0, 0.75), Slot(MERGED, 2),
    )  # fmt: skip
    return Recipe(merge=merge, path=path)


IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]])


def test_layers_are_shared_not_copied(pool):
    model = pool.assemble(_mixed_recipe())
    src = pool.models["a"].get_submodule(pool.arch.layers_prefix.rstrip("."))[1]
    slots = model.get_submodule(pool.arch.layers_prefix.rstrip("."))
    assert len(slots) == 6
    for p_slot, p_src in zip(slots[1].parameters(), src.parameters()):
        assert p_slot.data_ptr() == p_src.data_ptr()
    before = [p.clone() for p in src.parameters()]
    model(IDS)
    assert all(torch.equal(a, b) for a, b in zip(before, src.parameters()))


def test_identity_path_is_the_merged_model(pool):
    r = Recipe(merge=_mixed_recipe().merge)
    assert pool.assemble(r) is pool.merged_model(r.merge)
    assert pool.assemble(Recipe.single("a")) is pool.models["a"]
    n = pool.merges_built
    pool.assemble(_mixed_recipe())
    assert pool.merges_built == n  # merged layers computed once per parameter setting


def test_materialised_checkpoint_matches_in_memory(pool, tmp_path):
    recipe = _mixed_recipe()
    model = pool.assemble(recipe)
    out = pool.materialise(recipe, tmp_path / "ckpt")
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, loaded(IDS).logits, rtol=1e-5, atol=1e-5)
    assert (out / "recipe.yaml").is_file() and (out / "README.md").is_file()
    assert Recipe.load(out / "recipe.yaml").hash == recipe.hash


def test_generation_with_kv_cache_matches(pool, tmp_path):
    recipe = _mixed_recipe()
    model = pool.assemble(recipe)
    loaded = AutoModelForCausalLM.from_pretrained(pool.materialise(recipe, tmp_path / "c")).eval()
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    prompt = IDS[:1, :4]
    with_cache = model.generate(prompt, use_cache=True, **kw)
    without = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(with_cache, without)
    assert torch.equal(with_cache, loaded.generate(prompt, use_cache=True, **kw))


def test_bad_recipe_and_pool_errors(pool, tiny_factory):
    with pytest.raises(RecipeError, match="unknown source 'zzz'"):
        pool.assemble(Recipe(path=(Slot("zzz", 0),)))
    with pytest.raises(RecipeError, match="layer 3 out of range"):
        pool.assemble(Recipe(path=(Slot("a", 3),)))
    with pytest.raises(MergeError, match="layer"):
        family = pool.arch.family.name
        ModelPool({"base": pool.paths["base"], "deep": tiny_factory(family, layers=4)})


def test_every_library_checkpoint_load_goes_through_the_quiet_loader():
    """transformers draws a "Loading weights" bar per load; MergeGym's own loads must not."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    loose = []
    # The library and the user's entry points; the benchmarks time raw loads on purpose.
    for pattern in ("merge_env/**/*.py", "experiments/*.py"):
        for path in sorted(root.glob(pattern)):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "from_pretrained"
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "AutoModelForCausalLM"
                ):
                    loose.append(f"{path.relative_to(root)}:{node.lineno}")
    # The one sanctioned call is inside load_causal_lm itself.
    tree = ast.parse((root / "merge_env/search/assemble.py").read_text())
    loader = next(n for n in tree.body if getattr(n, "name", None) == "load_causal_lm")
    inside = [
        f"merge_env/search/assemble.py:{n}" for n in range(loader.lineno, loader.end_lineno + 1)
    ]
    assert len(loose) == 1 and loose[0] in inside, loose
