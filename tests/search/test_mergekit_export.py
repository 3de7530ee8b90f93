"""The mergekit export, run through real mergekit: its tensors are MergeGym's materialised ones.

For every deterministic merge method, the recipe's exported file is run with the exact command
written in it (mergekit-yaml for one stage, mergekit-multi for a merge plus an inference path) on
tiny Llama checkpoints, and every tensor is compared with ``ModelPool.materialise``. GPT-2's
residual scales, and the files a run writes to ``recipes/``, are run the same way.
"""

from __future__ import annotations

import shlex
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from merge_env.merging.methods.registry import OPERATORS
from merge_env.merging.plan import ModelRef, ParamMerge
from merge_env.search.assemble import ModelPool
from merge_env.search.mergekit_export import MergekitExport, mergekit_export
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot
from tests.conftest import build_tiny

pytest.importorskip(
    "mergekit", reason="mergekit is not installed (pip install -e '.[test]' installs it)"
)

TOLERANCE = 1e-5
DETERMINISTIC = sorted(name for name, op in OPERATORS.items() if not op.stochastic)
PARAMS = {
    "linear": {},
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "breadcrumbs": {"density": 0.8, "gamma": 0.05},
    "breadcrumbs_ties": {"density": 0.8, "gamma": 0.05},
}
# first and last slots not from the shell (``merged``), a repeated layer, scales up and down
PATH = (Slot("add", 1, 1.25), Slot(MERGED, 0), Slot(MERGED, 1, 0.5), Slot(BASE, 1), Slot("rev", 2))


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[str, ModelPool]:
    """Per family: a pool of a tiny base and two noisy fine-tunes of it (built once)."""
    root = tmp_path_factory.mktemp("mk-pool")
    out = {}
    for family in ("llama", "gpt2"):
        base = build_tiny(root / f"{family}-base", family, layers=3)
        dirs = {BASE: base}
        for i, name in enumerate(("add", "rev")):
            dirs[name] = build_tiny(root / f"{family}-{name}", seed=i + 1, like=base)
        out[family] = ModelPool(dirs)
    return out


def _merge(method: str) -> ParamMerge:
    if method == "slerp":
        models = (ModelRef(BASE), ModelRef("add"))
        return ParamMerge("slerp", BASE, models, {"t": [0.0, 0.5, 1.0]})
    models = tuple(
        ModelRef(name, {"weight": w, **PARAMS[method]}) for name, w in (("add", 0.6), ("rev", 0.4))
    )
    return ParamMerge(method, None if method == "linear" else BASE, models)


def _run_mergekit(command: str) -> None:
    """Run an exported command line in this process, through the console script it names."""
    tool, *args = shlex.split(command)
    (script,) = entry_points(group="console_scripts", name=tool)
    script.load().main(args, standalone_mode=False)


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted(folder.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def _max_diff(pool: ModelPool, recipe: Recipe, tmp_path: Path) -> tuple[MergekitExport, float]:
    """Export, run mergekit, materialise with MergeGym; the largest |difference| of any tensor."""
    export = mergekit_export(
        recipe,
        {n: str(p) for n, p in pool.paths.items()},
        pool.num_layers,
        residual_out=pool.arch.family.residual_out,
    )
    config = tmp_path / f"recipe{export.suffix}"
    out = tmp_path / "mergekit-out"
    config.write_text(export.text(str(config), str(out), header=[f"recipe {recipe.hash}"]))
    _run_mergekit(export.command(str(config), str(out)))
    ours = _tensors(pool.materialise(recipe, tmp_path / "mergegym-out"))
    theirs = _tensors(out)
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        assert theirs[name].shape == t.shape, name
    return export, max(float((theirs[n] - t).abs().max()) for n, t in ours.items())


def test_every_deterministic_method_is_covered():
    assert set(DETERMINISTIC) == set(PARAMS) | {"slerp"}


@pytest.mark.parametrize("with_path", [False, True], ids=["merge", "merge+path"])
@pytest.mark.parametrize("method", DETERMINISTIC)
def test_mergekit_reproduces_the_recipe(pools, tmp_path, method, with_path):
    recipe = Recipe(merge=_merge(method), path=PATH if with_path else None)
    export, diff = _max_diff(pools["llama"], recipe, tmp_path)
    assert export.tool == ("mergekit-multi" if with_path else "mergekit-yaml")
    assert not export.notes
    print(f"{method} {'with' if with_path else 'without'} path: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_mergekit_reproduces_a_per_part_genome_merge(pools, tmp_path):
    # the genome agents' per-part weights (env.weight_parts) are mergekit {filter, value} lists
    from agents.genome import Genome, PoolFacts

    pool = pools["llama"]
    genome = Genome(PoolFacts(("add", "rev"), pool.num_layers), level="param",
                    weight_parts=("self_attn", "mlp"))  # fmt: skip
    recipe = genome.decode(np.array([1.0, 0.2, 0.1, 1.0, 0.5, 0.5]))
    assert isinstance(recipe.merge.models[0].parameters["weight"], list)
    export, diff = _max_diff(pool, recipe, tmp_path)
    assert export.tool == "mergekit-yaml" and not export.notes
    print(f"per-part ties: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_gpt2_scales_reach_its_own_projections(pools, tmp_path):
    # GPT-2's residual branches end in attn.c_proj and mlp.c_proj, not Llama's o_proj/down_proj
    recipe = Recipe(path=(Slot("add", 0, 2.0), Slot(BASE, 1, 0.5), Slot("rev", 2)), shell=BASE)
    export, diff = _max_diff(pools["gpt2"], recipe, tmp_path)
    assert export.tool == "mergekit-yaml"
    print(f"gpt2 path with scales: max abs diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_report_writes_files_mergekit_runs(pools, tmp_path, monkeypatch):
    # the files a run leaves in recipes/: the command in each file's header, run in that folder
    from experiments.report import write_best_recipes

    pool = pools["llama"]
    recipes = [Recipe(merge=_merge("ties"), path=PATH), Recipe(merge=_merge("ties"))]
    dare = ParamMerge("dare_ties", BASE, (ModelRef("add", {"weight": 0.5, "density": 0.5}),))
    recipes.append(Recipe(merge=dare))
    entries = iter([SimpleNamespace(recipe=r.to_dict(), recipe_hash=r.hash) for r in recipes])
    problem = SimpleNamespace(pool=pool, best=lambda *_: next(entries))
    out = tmp_path / "recipes"
    write_best_recipes(problem, np.eye(3), out)
    names = sorted(p.name for p in out.glob("*.mergekit*"))
    assert names == [
        "pref_00.mergekit-multi.yaml", "pref_01.mergekit.yaml", "pref_02.mergekit.yaml"
    ]  # fmt: skip
    assert "NOTE: dare_ties drops entries at random" in (out / names[2]).read_text()
    monkeypatch.chdir(out)
    for i, name in enumerate(names[:2]):
        run = next(line for line in (out / name).read_text().splitlines() if "# run: " in line)
        _run_mergekit(run.split("# run: ", 1)[1])
        ours = _tensors(pool.materialise(recipes[i], tmp_path / f"ours-{i}"))
        theirs = _tensors(out / f"pref_{i:02d}.merged")
        assert set(theirs) == set(ours)
        assert max(float((theirs[n] - t).abs().max()) for n, t in ours.items()) <= TOLERANCE
