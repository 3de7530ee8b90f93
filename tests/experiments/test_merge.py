"""The merge CLI on a mergekit-style YAML: outputs, exit codes and one-line errors."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from experiments import merge as merge_cli
from experiments.merge import main, parse_size
from merge_env.merging.checkpoint import Checkpoint
from merge_env.merging.engine import MergeEngine
from merge_env.merging.plan import ParamMerge

REPO = Path(__file__).resolve().parents[2]

# A researcher's mergekit YAML: gradients, filters, per-model and top-level parameters, dtype.
RECIPE = """\
merge_method: ties
base_model: {base}
models:
  - model: {base}
  - model: {ft0}
    parameters:
      density: [1.0, 0.7, 0.3]
      weight:
        - filter: mlp
          value: [0.2, 0.8]
        - value: 0.5
  - model: {ft1}
    parameters:
      density: 0.5
parameters:
  weight: 0.4
  normalize: true
  int8_mask: true
dtype: bfloat16
"""


@pytest.fixture
def recipe_file(tiny_factory, tmp_path) -> Path:
    base = tiny_factory("llama", layers=3)
    ft0 = tiny_factory(like=base, seed=1)
    ft1 = tiny_factory(like=base, seed=2)
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE.format(base=base, ft0=ft0, ft1=ft1))
    return path


def test_cli_runs_a_mergekit_yaml(recipe_file, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main([str(recipe_file), str(out), "--no-progress", "--shard-size", "40KB"]) == 0
    assert str(out) in capsys.readouterr().out
    merged = Checkpoint(out)
    assert merged.config["dtype"] == "bfloat16"
    assert len(list(out.glob("model-*.safetensors"))) > 1
    engine = MergeEngine(ParamMerge.load_yaml(recipe_file))
    for name in merged.names:
        got = merged.get(name)
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, engine.merged_tensor(name)), name
    # the filter and the gradient reached the tensors: mlp and attention weights differ per layer
    params = engine._params
    w = {n: params[n][1][0]["weight"] for n in params}
    assert w["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.2)
    assert w["model.layers.2.mlp.up_proj.weight"] == pytest.approx(0.8)
    assert w["model.layers.2.self_attn.q_proj.weight"] == 0.5
    assert params["model.layers.0.mlp.up_proj.weight"][1][1]["weight"] == 0.4  # top-level
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["dtype"] == "bfloat16"


def test_cli_existing_output_and_overwrite(recipe_file, tmp_path, capsys):
    out = tmp_path / "merged"
    assert main([str(recipe_file), str(out), "--no-progress"]) == 0
    assert main([str(recipe_file), str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "exists" in err and len(err.splitlines()) == 1
    flags = ["--no-progress", "--overwrite", "--fast-ties", "--workers", "1"]
    assert main([str(recipe_file), str(out), *flags]) == 0
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["exact_ties"] is False


def test_cli_bad_recipe_is_one_line_exit_2(recipe_file, tmp_path):
    data = yaml.safe_load(recipe_file.read_text())
    data["models"][1]["parameters"]["densty"] = 0.5
    recipe_file.write_text(yaml.safe_dump(data))
    out = tmp_path / "merged"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.merge", str(recipe_file), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert str(recipe_file) in lines[0] and "models[1]" in lines[0] and "'densty'" in lines[0]
    assert not out.exists()


def test_cli_refuses_to_write_onto_an_input(recipe_file, tmp_path, capsys):
    base = Path(yaml.safe_load(recipe_file.read_text())["base_model"])
    before = sorted(p.name for p in base.iterdir())
    for out in (base, base.parent):  # the input itself, or a folder holding it
        assert main([str(recipe_file), str(out), "--no-progress", "--overwrite"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "input" in err
    assert sorted(p.name for p in base.iterdir()) == before
    Checkpoint(base)  # still readable


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "/disk/merged/model.safetensors"),
        PermissionError(errno.EACCES, "Permission denied", "/disk/merged"),
    ],
)
def test_cli_system_error_is_one_line_exit_2(recipe_file, tmp_path, capsys, monkeypatch, error):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(merge_cli, "run_merge", fail)
    assert main([str(recipe_file), str(tmp_path / "merged"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {error.filename}: {error.strerror}"


def test_cli_unreadable_yaml(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [unclosed\n")
    assert main([str(bad), str(tmp_path / "o")]) == 2
    assert f"{bad}: cannot read recipe" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.yaml"), str(tmp_path / "o")]) == 2


def test_parse_size():
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size("1GiB") == 2**30
    assert parse_size("500mb") == 500 * 10**6
    assert parse_size("1234") == 1234
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size("two gigs")
    with pytest.raises(SystemExit):
        main(["r.yaml", "o", "--shard-size", "lots"])
    assert parse_size("1.5K") == 1500


def test_merge_cli_imports_no_framework_on_the_way_to_the_first_tensor():
    # a short merge's wall time is mostly interpreter start and imports (issue 18): the merge
    # CLI needs torch, safetensors and yaml, never transformers, SB3, Hydra, Ray or matplotlib
    import subprocess
    import sys

    heavy = ("transformers", "stable_baselines3", "hydra", "ray", "matplotlib", "wandb", "optuna")
    code = (
        "import sys, experiments.merge, merge_env.merging.engine; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
