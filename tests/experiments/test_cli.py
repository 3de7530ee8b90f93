"""Bad run configurations, tried as a new user would: one line on stderr naming the key, file or
value, exit status 2, no traceback, no run folder left behind, before any model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(cwd: Path, module: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", module, *overrides],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _assert_one_line(proc: subprocess.CompletedProcess, *named: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "HYDRA_FULL_ERROR" not in proc.stderr and "full_key" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in named:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "overrides, named",
    [
        (["device=tpu"], ["device", "'tpu'"]),
        (["+learning_rate=0.1"], ["learning_rate", "config.yaml"]),
        (["pool=local", "pool.base=/no/such/base", "pool.experts={a: /no/such/a}"],
         ["/no/such/base", "config.json"]),
    ],
)  # fmt: skip
def test_bad_run_config_is_one_line_and_leaves_no_run_folder(tmp_path, overrides, named):
    proc = _run(tmp_path, "experiments.run", "logger=none", *overrides)
    _assert_one_line(proc, *named)
    assert not (tmp_path / "outputs").exists()


def test_empty_task_file_is_named(tmp_path, tiny_factory):
    base = tiny_factory("llama", layers=2)
    expert = tiny_factory(like=base, seed=1)
    empty = tmp_path / "math.jsonl"
    empty.write_text("")
    proc = _run(
        tmp_path, "experiments.run", "logger=none", "pool=local", f"pool.base={base}",
        f"pool.experts={{math: {expert}}}", "tasks=jsonl", f"tasks.files={{math: {empty}}}",
    )  # fmt: skip
    _assert_one_line(proc, str(empty), "'math'")
    assert not (tmp_path / "outputs").exists()


def test_an_error_hydra_wraps_while_instantiating_is_unwrapped(tmp_path):
    # agent options are checked by the agent's constructor, inside hydra.utils.instantiate
    proc = _run(tmp_path, "experiments.run", "logger=none", "agent=cmaes", "agent.popsize=1")
    _assert_one_line(proc, "agent.popsize", "1")
    assert not (tmp_path / "outputs").exists()


def test_an_explicit_run_dir_made_for_a_failed_run_is_removed(tmp_path):
    run_dir = tmp_path / "runs" / "mine"
    proc = _run(tmp_path, "experiments.run", "logger=none", f"run_dir={run_dir}", "pool=local",
                "pool.base=/no/such/base", "pool.experts={a: /no/such/a}")  # fmt: skip
    _assert_one_line(proc, "/no/such/base")
    assert not run_dir.exists()


@pytest.mark.parametrize(
    "module, args, named",
    [
        ("experiments.build_zoo", ["--set", "bogus=1"], ["'bogus=1'", "expert_replay"]),
        ("experiments.regime_variants", ["--set", "bogus=1"], ["'bogus=1'", "expert_steps"]),
        ("experiments.compare_agents", ["--merge", "nowhere", "--out", "out"], ["results.json"]),
        ("experiments.ablate_ppo", ["--merge", "nowhere", "--out", "out"], ["results.json"]),
    ],
)
def test_script_error_is_one_line(tmp_path, module, args, named):
    """The argparse scripts report a bad flag or input as the Hydra jobs do (exit_on_error)."""
    proc = _run(tmp_path, module, *args)
    line = _assert_one_line(proc, *named)
    assert "nowhere" in line or "bogus" in line
    assert not (tmp_path / "out").exists()


def test_exit_on_error_passes_the_status_through():
    from merge_env.errors import ConfigError, exit_on_error

    for returned, status in ((0, 0), (3, 3), ({"runs": []}, 0), (None, 0)):
        with pytest.raises(SystemExit) as stop:
            exit_on_error(lambda returned=returned: returned)
        assert stop.value.code == status

    def bad() -> int:
        raise ConfigError("zoo.seed: must be >= 0")

    with pytest.raises(SystemExit) as stop:
        exit_on_error(bad)
    assert stop.value.code == 2
