"""ParamMerge parsing and the streaming MergeEngine on tiny real Llama and GPT-2 checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from merge_env.errors import CheckpointError, ConfigError, MergeError, RecipeError
from merge_env.merging.checkpoint import Checkpoint
from merge_env.merging.engine import MergeEngine, run_merge
from merge_env.merging.methods.registry import OPERATORS
from merge_env.merging.plan import RECIPE_FILE, ParamMerge
from tests.conftest import build_tiny

METHOD_PARAMS = {
    "linear": {},
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare_linear": {"density": 0.6},
    "dare_ties": {"density": 0.6},
    "breadcrumbs": {"density": 0.8, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.8, "gamma": 0.05},
    "slerp": None,
}


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, tuple[Path, list[Path]]]:
    """Per family: a base and two noisy fine-tunes of it (built once for this module)."""
    root = tmp_path_factory.mktemp("pools")
    out = {}
    for family in ("llama", "gpt2"):
        base = build_tiny(root / f"{family}-base", family, layers=3)
        fts = [build_tiny(root / f"{family}-ft{i}", seed=i + 1, like=base) for i in range(2)]
        out[family] = (base, fts)
    return out


def recipe(method: str, base: Path, fts: list[Path], **top) -> dict:
    """A mergekit-style recipe dict for ``method`` over the base and fine-tunes."""
    if method == "slerp":
        models = [{"model": str(base)}, {"model": str(fts[0])}]
        return {"merge_method": "slerp", "base_model": str(base), "models": models,
                "parameters": {"t": [0.0, 0.5, 1.0], **top}}  # fmt: skip
    extra = METHOD_PARAMS[method]
    models = [{"model": str(f), "parameters": {"weight": 0.6 - 0.2 * i, **extra}}
              for i, f in enumerate(fts)]  # fmt: skip
    data = {"merge_method": method, "models": models, "parameters": dict(top)}
    if method != "linear":
        data["base_model"] = str(base)
    return data


def no_leftovers(out: Path) -> bool:
    """Neither the output folder nor a hidden temporary beside it exists."""
    hidden = [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return not out.exists() and not hidden


def test_every_operator_is_covered():
    assert set(METHOD_PARAMS) == set(OPERATORS)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("method", list(METHOD_PARAMS))
def test_every_method_end_to_end(pools, tmp_path, family, method):
    base, fts = pools[family]
    spec = ParamMerge.from_mergekit(recipe(method, base, fts), where="test")
    out = run_merge(spec, tmp_path / "out", progress=False, shard_size=30_000)
    model = AutoModelForCausalLM.from_pretrained(out)
    logits = model(torch.tensor([[1, 2, 3, 4, 5]])).logits
    assert torch.isfinite(logits).all()
    merged, ref = Checkpoint(out), Checkpoint(base)
    assert set(merged.names) == set(ref.names)  # exactly the base's tensors, head included
    assert len(json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]) > 1
    changed = [n for n in ref.names if not torch.equal(merged.get(n), ref.get(n))]
    assert changed, "the merge left the base untouched"
    assert ParamMerge.load_yaml(out / RECIPE_FILE) == spec
    assert method in (out / "README.md").read_text()
    assert (out / "generation_config.json").is_file()


def test_linear_of_identical_models_is_exact(pools, tmp_path):
    base, _ = pools["llama"]
    twin = shutil.copytree(base, tmp_path / "twin")
    data = {"merge_method": "linear",
            "models": [{"model": str(base), "parameters": {"weight": 2.0}},
                       {"model": str(twin), "parameters": {"weight": 2.0}}]}  # fmt: skip
    out = run_merge(ParamMerge.from_mergekit(data), tmp_path / "out", progress=False)
    a, b = Checkpoint(base), Checkpoint(out)
    assert a.names == b.names or set(a.names) == set(b.names)
    for name in a.names:
        assert torch.equal(a.get(name), b.get(name)), name
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    la = AutoModelForCausalLM.from_pretrained(base)(ids).logits
    lb = AutoModelForCausalLM.from_pretrained(out)(ids).logits
    assert torch.equal(la, lb)


def test_gradient_and_filter_parameters_vary_by_layer(pools):
    base, fts = pools["llama"]
    data = {"merge_method": "linear", "base_model": str(base),
            "models": [{"model": str(fts[0]), "parameters": {"weight": [0.0, 1.0]}}],
            "parameters": {"weight": [1.0, 0.0]}}  # fmt: skip
    engine = MergeEngine(ParamMerge.from_mergekit(data))
    b, f = Checkpoint(base), Checkpoint(fts[0])
    name = "model.layers.{}.self_attn.q_proj.weight"
    torch.testing.assert_close(engine.merged_tensor(name.format(0)), b.get(name.format(0)))
    mid = (b.get(name.format(1)) + f.get(name.format(1))) / 2
    torch.testing.assert_close(engine.merged_tensor(name.format(1)), mid)
    torch.testing.assert_close(engine.merged_tensor(name.format(2)), f.get(name.format(2)))
    # non-layer tensors take t = 0 (mergekit): the embedding is the base's
    emb = "model.embed_tokens.weight"
    assert torch.equal(engine.merged_tensor(emb), b.get(emb))

    filtered = {"merge_method": "ties", "base_model": str(base),
                "models": [{"model": str(f), "parameters": {
                    "weight": 1.0, "density": [{"filter": "mlp", "value": [0.2, 0.9]},
                                               {"value": 0.5}]}} for f in fts]}  # fmt: skip
    engine = MergeEngine(ParamMerge.from_mergekit(filtered))
    dens = {n: engine._params[n][1][0]["density"] for n in engine._params}
    assert dens["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.2)
    assert dens["model.layers.2.mlp.up_proj.weight"] == pytest.approx(0.9)
    assert dens["model.layers.1.self_attn.q_proj.weight"] == 0.5
    layer = engine.layer_tensors(2)
    assert set(layer) == set(Checkpoint(base).arch.layer_tensor_names(Checkpoint(base).names, 2))
    kept = (layer["model.layers.2.mlp.up_proj.weight"] != Checkpoint(base).get(
        "model.layers.2.mlp.up_proj.weight")).float().mean()  # fmt: skip
    assert kept > 0.6  # density 0.9 at the last layer keeps most of the deltas


def test_dare_is_seeded_per_tensor_not_by_order(pools):
    base, fts = pools["llama"]
    spec = ParamMerge.from_mergekit(recipe("dare_ties", base, fts))
    names = [s.name for s in MergeEngine(spec).output_specs()]
    forward = MergeEngine(spec)
    first = {n: forward.merged_tensor(n) for n in names}
    backward = MergeEngine(spec)
    for n in reversed(names):
        assert torch.equal(backward.merged_tensor(n), first[n]), n
    reseeded = MergeEngine(ParamMerge.from_mergekit({**spec.to_mergekit(), "seed": 7}))
    assert not torch.equal(reseeded.merged_tensor(names[3]), first[names[3]])


def test_mixed_tying_keeps_the_merged_head(tmp_path):
    base = build_tiny(tmp_path / "base", "llama", tied=True)
    ft = build_tiny(tmp_path / "ft", like=base, seed=3)
    state = load_file(ft / "model.safetensors")
    state["lm_head.weight"] = state["model.embed_tokens.weight"] + 0.5
    save_file(state, ft / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((ft / "config.json").read_text())
    (ft / "config.json").write_text(json.dumps({**cfg, "tie_word_embeddings": False}))
    data = {"merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(ft), "parameters": {"weight": 1.0}}]}  # fmt: skip
    out = run_merge(ParamMerge.from_mergekit(data), tmp_path / "out", progress=False)
    merged = Checkpoint(out)
    assert "lm_head.weight" in merged and merged.config["tie_word_embeddings"] is False
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, merged.get("lm_head.weight"))


# -- bad inputs: one clear error naming the culprit, and nothing left behind ------------------
def _ties(base: Path, *models: Path) -> ParamMerge:
    return ParamMerge.from_mergekit(recipe("ties", base, list(models)))


def test_shape_mismatch_names_tensor_and_file(pools, tmp_path):
    base, fts = pools["llama"]
    wide = build_tiny(tmp_path / "wide", "llama", layers=3, vocab=80)
    with pytest.raises(MergeError, match=r"embed_tokens.*shape.*wide"):
        run_merge(_ties(base, fts[0], wide), tmp_path / "out", progress=False)
    assert no_leftovers(tmp_path / "out")


def test_missing_tensor_names_tensor_and_file(pools, tmp_path):
    base, fts = pools["llama"]
    holed = shutil.copytree(fts[1], tmp_path / "holed")
    state = load_file(holed / "model.safetensors")
    del state["model.layers.1.mlp.down_proj.weight"]
    save_file(state, holed / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MergeError, match=r"layers\.1\.mlp\.down_proj.*missing.*holed"):
        run_merge(_ties(base, fts[0], holed), tmp_path / "out", progress=False)
    assert no_leftovers(tmp_path / "out")


def test_unknown_architecture_and_corrupt_file(pools, tmp_path):
    base, fts = pools["llama"]
    odd = shutil.copytree(fts[1], tmp_path / "odd")
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(CheckpointError, match=r"odd.*unknown architecture.*mamba"):
        run_merge(_ties(base, fts[0], odd), tmp_path / "out", progress=False)
    cut = shutil.copytree(fts[1], tmp_path / "cut")
    blob = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"cut/model\.safetensors.*truncated"):
        run_merge(_ties(base, fts[0], cut), tmp_path / "out", progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint directory"):
        run_merge(_ties(base, tmp_path / "nowhere"), tmp_path / "out", progress=False)
    assert no_leftovers(tmp_path / "out")


def test_nan_input_names_tensor_and_file(pools, tmp_path):
    base, fts = pools["llama"]
    bad = shutil.copytree(fts[1], tmp_path / "bad")
    state = load_file(bad / "model.safetensors")
    state["model.layers.2.self_attn.v_proj.weight"][0, 0] = float("nan")
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    data = recipe("task_arithmetic", base, [fts[0], bad])
    with pytest.raises(MergeError, match=r"layers\.2\.self_attn\.v_proj.*non-finite.*bad"):
        run_merge(ParamMerge.from_mergekit(data), tmp_path / "out", progress=False)
    assert no_leftovers(tmp_path / "out")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(merge_method="tiez"), r"merge_method.*unknown merge method 'tiez'"),
        (lambda d: d["models"][1]["parameters"].update(densty=0.3), r"models\[1\].*'densty'"),
        (lambda d: d["parameters"].update(lambda_=1), r"unknown parameter 'lambda_'"),
        (lambda d: d.pop("base_model"), r"base_model.*needs a base"),
        (lambda d: d.update(slices=[]), r"'slices' is not supported"),
        (lambda d: d.update(foo=1), r"unknown key 'foo'"),
        (lambda d: d["models"][0]["parameters"].update(weight=[0.1, "x"]), r"'weight'.*'x'"),
        (lambda d: d["models"][0]["parameters"].update(normalize=True), r"'normalize' is a global"),
        (lambda d: d.update(dtype="float8"), r"dtype.*float8"),
        (lambda d: d["models"].append(dict(d["models"][0])), r"listed twice"),
    ],
)
def test_bad_recipes_fail_before_reading(pools, tmp_path, monkeypatch, edit, match):
    base, fts = pools["llama"]
    data = recipe("ties", base, fts)
    edit(data)
    monkeypatch.setattr(Checkpoint, "get", lambda *a: pytest.fail("a tensor was read"))
    with pytest.raises(RecipeError, match=match):
        run_merge(ParamMerge.from_mergekit(data, where="my.yaml"), tmp_path / "out")
    assert no_leftovers(tmp_path / "out")


def test_filter_without_default_fails_before_reading(pools, monkeypatch):
    base, fts = pools["llama"]
    data = recipe("ties", base, fts)
    data["models"][0]["parameters"]["weight"] = [{"filter": "mlp", "value": 1.0}]
    monkeypatch.setattr(Checkpoint, "get", lambda *a: pytest.fail("a tensor was read"))
    with pytest.raises(RecipeError, match=r"tensor 'model\.embed_tokens\.weight'.*'weight'"):
        MergeEngine(ParamMerge.from_mergekit(data))
    data["parameters"]["weight"] = 0.5  # mergekit falls through to the top-level value
    MergeEngine(ParamMerge.from_mergekit(data))


def test_existing_output_is_kept_without_overwrite(pools, tmp_path):
    base, fts = pools["llama"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="exists"):
        run_merge(_ties(base, *fts), out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    run_merge(_ties(base, *fts), out, progress=False, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_refuses_to_overwrite_an_input_even_when_asked(pools, tmp_path):
    # overwrite=True replaces the output folder: onto an input (or a folder holding one) it
    # would delete that input, so the engine refuses before touching anything
    base, fts = pools["llama"]
    before = {p.name: p.read_bytes() for p in fts[0].iterdir()}
    for out in (fts[0], fts[0].parent):
        with pytest.raises(ConfigError, match="input model"):
            run_merge(_ties(base, *fts), out, progress=False, overwrite=True)
    assert {p.name: p.read_bytes() for p in fts[0].iterdir()} == before


def test_round_trip_and_linear_base_as_input(pools):
    base, fts = pools["llama"]
    data = {"merge_method": "linear", "base_model": str(base),
            "models": [{"model": str(fts[0]), "parameters": {"weight": [0.1, 0.5]}}],
            "parameters": {"normalize": False, "weight": 0.25}, "dtype": "bfloat16",
            "seed": 3}  # fmt: skip
    spec = ParamMerge.from_mergekit(data)
    assert spec.to_mergekit() == data
    assert ParamMerge.from_mergekit(spec.to_mergekit()) == spec
    del data["parameters"]["weight"]  # mergekit merges the base as an input: it needs a weight
    with pytest.raises(RecipeError, match="base_model.*weight"):
        ParamMerge.from_mergekit(data)


def test_workers_do_not_change_the_result(pools, tmp_path):
    base, fts = pools["gpt2"]
    spec = ParamMerge.from_mergekit(recipe("dare_ties", base, fts))
    threads = torch.get_num_threads()
    one = Checkpoint(run_merge(spec, tmp_path / "one", progress=False, workers=1))
    three = Checkpoint(run_merge(spec, tmp_path / "three", progress=False, workers=3))
    assert torch.get_num_threads() == threads  # the intra-op setting is restored
    for name in one.names:
        assert torch.equal(one.get(name), three.get(name)), name


def test_fast_ties_round_trips_and_keeps_density(pools):
    base, fts = pools["llama"]
    exact = ParamMerge.from_mergekit(recipe("ties", base, fts))
    fast = ParamMerge.from_mergekit({**exact.to_mergekit(), "exact_ties": False})
    assert not fast.exact_ties and fast.to_mergekit()["exact_ties"] is False
    assert "exact_ties" not in exact.to_mergekit()
    name = "model.layers.1.mlp.down_proj.weight"
    b = Checkpoint(base).get(name)
    a, f = MergeEngine(exact).merged_tensor(name), MergeEngine(fast).merged_tensor(name)
    assert (a != f).float().mean() < 0.01  # only equal magnitudes on the cut may differ
    assert (f != b).any()
    with pytest.raises(RecipeError, match="exact_ties"):
        ParamMerge.from_mergekit({**exact.to_mergekit(), "exact_ties": "yes"})


@pytest.mark.parametrize("read_ahead,workers", [(1, 1), (1, 2), (2**30, 2)])
def test_prefetched_stream_equals_tensor_by_tensor(pools, tmp_path, read_ahead, workers):
    """Inputs read ahead on the reader thread (one tensor at a time, or all) merge to exactly
    what the engine gives reading each tensor itself."""
    base, fts = pools["llama"]
    spec = ParamMerge.from_mergekit(recipe("ties", base, fts), where="test")
    out = run_merge(spec, tmp_path / "out", progress=False, read_ahead=read_ahead,
                    workers=workers)  # fmt: skip
    engine, merged = MergeEngine(spec), Checkpoint(out)
    for s in engine.output_specs():
        assert torch.equal(merged.get(s.name), engine.merged_tensor(s.name)), s.name
