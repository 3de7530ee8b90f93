"""Every config of every group composes and passes validation; the launcher configs resolve."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.config_check import check_top_level, validate_run_config
from merge_env.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
# groups whose configs need values only the user can give (marked ??? in the file)
NEEDS_USER = {("pool", "local"), ("pool", "recycling"), ("tasks", "jsonl")}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides: str, hydra_config: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config", overrides=["run_name=t", *overrides], return_hydra_config=hydra_config
        )


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("pool", "tasks", "env", "agent", "evaluator", "logger") for o in _options(g)],
)
def test_every_group_option_composes_and_validates(group, option):
    cfg = _compose(f"{group}={option}")
    if (group, option) in NEEDS_USER:
        with pytest.raises(ConfigError, match="required value is missing"):
            validate_run_config(cfg)
    else:
        validate_run_config(cfg)  # imports every _target_ and checks every key's type


def test_a_misspelt_key_in_a_new_group_option_is_named():
    cfg = _compose("tasks=reasoning_gym", "+tasks.n_serach=3")
    with pytest.raises(ConfigError, match="tasks.n_serach: unknown option"):
        validate_run_config(cfg)


@pytest.mark.parametrize(
    "override, named",
    [
        ("env.lattice_steps=0", "env.lattice_steps: must be >= 1, got 0"),
        ("env.scalarisation=chebyshev", "env.scalarisation: 'chebyshev' is not one of"),
        ("env.mode=tree", "env.mode: 'tree' is not one of free, aligned"),
        ("env.param_mode=learned", "env.param_mode: 'learned' is not one of"),
        ("env.merge_method=model_soup", "env.merge_method: 'model_soup' is not one of"),
        ("env.density=0", "env.density: must be in"),
        ("env.weight_parts=[mlp,mlp]", "env.weight_parts: a part is listed twice"),
        ("env.weight_parts=mlp", "agent.weight_parts: expected Sequence, got 'mlp' (str)"),
        ("evaluator.metric=accuracy", "evaluator.metric: 'accuracy' is not one of"),
        ("evaluator.batch_size=0", "evaluator.batch_size: must be >= 1"),
        ("device=tpu", "device: 'tpu' is not a device"),
    ],
)
def test_a_setting_outside_its_choices_or_range_is_named_before_any_work(override, named):
    # all of these used to surface late: in the report (CMA-ES), in torch, or never (lattice 0)
    with pytest.raises(ConfigError, match=re.escape(named)):
        validate_run_config(_compose("agent=cmaes", override))


def test_cuda_without_a_cuda_device_is_named():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="device: 'cuda' but this machine has 0 CUDA"):
        validate_run_config(_compose("device=cuda"))


@pytest.mark.parametrize("config_name", ["config", "recycle", "moe"])
def test_top_level_keys_are_those_the_config_file_declares(config_name):
    def compose_job(*overrides: str):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose(config_name, overrides=list(overrides))

    check_top_level(compose_job(), CONF / f"{config_name}.yaml")
    with pytest.raises(ConfigError, match=f"^budgett: not a setting of {config_name}.yaml"):
        check_top_level(compose_job("+budgett=3"), CONF / f"{config_name}.yaml")


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None,
    reason="hydra-submitit-launcher not installed (pip install 'mergegym[slurm]')",
)
@pytest.mark.parametrize(
    "launcher, target", [("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")]
)
def test_submitit_launchers_resolve(launcher, target):
    cfg = _compose(f"hydra/launcher={launcher}", hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.timeout_min > 0
