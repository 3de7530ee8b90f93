"""The lean linear merge (merging/lean.py): what it covers, and the full engine's output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from merge_env.merging.checkpoint import Checkpoint, save_checkpoint
from merge_env.merging.engine import run_merge
from merge_env.merging.lean import lean_merge, lean_spec
from merge_env.merging.plan import RECIPE_FILE, ParamMerge

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def pool(tiny_factory):
    base = tiny_factory("llama", layers=3)
    return [base, tiny_factory(like=base, seed=1), tiny_factory(like=base, seed=2)]


def _recipe(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _as_dtype(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    ckpt = Checkpoint(src)
    state = {n: t.to(dtype) for n, t in ckpt.state_dict().items()}
    return save_checkpoint(state, dst, config=ckpt.config, side_files_from=src)


@pytest.mark.parametrize(
    "extra",
    [{}, {"dtype": "float32"}, {"out_dtype": "float16"}, {"parameters": {"normalize": False}}],
)
@pytest.mark.parametrize("half", [False, True])
def test_lean_equals_full_engine(pool, tmp_path, extra, half):
    """Tensors (to float32 rounding), config, card and recipe as the full engine writes them."""
    models = pool
    if half:  # float16 inputs, and one float32 among them
        models = [_as_dtype(p, tmp_path / f"h{i}", torch.float16) for i, p in enumerate(pool[:2])]
        models.append(pool[2])
    data = {"merge_method": "linear",
            "models": [{"model": str(m), "parameters": {"weight": w}}
                       for m, w in zip(models, [0.5, 0.3, 0.4])], **extra}  # fmt: skip
    recipe = _recipe(tmp_path, data)
    lean = lean_merge(recipe, tmp_path / "lean")
    assert lean is not None
    full = run_merge(ParamMerge.load_yaml(recipe), tmp_path / "full", progress=False)
    a, b = Checkpoint(lean), Checkpoint(full)
    assert a.names == b.names
    for name in a.names:
        x, y = a.get(name), b.get(name)
        assert x.dtype == y.dtype and x.shape == y.shape
        torch.testing.assert_close(x, y)  # one rounding of the output dtype apart at most
    for file in ("config.json", "README.md", RECIPE_FILE, "tokenizer.json"):
        if (full / file).exists():
            assert (lean / file).read_text().replace("# lean\n", "# full\n") == (
                full / file
            ).read_text()


@pytest.mark.parametrize(
    "change",
    [
        {"merge_method": "ties"},
        {"base_model": "BASE"},
        {"models": [{"model": "M", "parameters": {"weight": [0.2, 0.8]}}]},
        {"models": [{"model": "M", "parameters": {"weight": [{"filter": "mlp", "value": 1}]}}]},
        {"models": [{"model": "M"}]},  # no weight anywhere: the full engine says so
        {"dtype": "bfloat16"},
        {"slices": []},
    ],
)
def test_lean_leaves_the_rest_to_the_full_engine(change):
    data = {"merge_method": "linear", "models": [{"model": "M", "parameters": {"weight": 1}}]}
    assert lean_spec(data) is not None
    assert lean_spec({**data, **change}) is None


def test_bfloat16_inputs_fall_back(pool, tmp_path):
    bf = _as_dtype(pool[1], tmp_path / "bf", torch.bfloat16)
    recipe = _recipe(tmp_path, {"merge_method": "linear", "parameters": {"weight": 1.0},
                                "models": [str(pool[0]), str(bf)]})  # fmt: skip
    assert lean_merge(recipe, tmp_path / "out") is None
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_linear_cli_imports_no_torch(pool, tmp_path):
    """The merge CLI reaches its first tensor (and its last) without torch, transformers,
    stable-baselines3, gymnasium, hydra or wandb."""
    recipe = _recipe(tmp_path, {"merge_method": "linear", "parameters": {"weight": 1.0},
                                "models": [str(p) for p in pool]})  # fmt: skip
    code = (
        "import sys; from experiments.merge import main\n"
        f"assert main([{str(recipe)!r}, {str(tmp_path / 'o')!r}, '--no-progress']) == 0\n"
        "heavy = ('torch', 'transformers', 'stable_baselines3', 'gymnasium', 'hydra', 'wandb')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert Checkpoint(tmp_path / "o").names
