"""Every config of every group composes and passes validation; the launcher configs resolve."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.config_check import validate_run_config
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
