"""The main job: composes, runs end to end on the tiny zoo, validates config, resumes after a kill."""

from __future__ import annotations

import builtins
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import moocore
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from transformers import AutoModelForCausalLM

from experiments.jobs import run_state
from experiments.run import run
from experiments.tracking import Tracker
from merge_env.errors import ConfigError
from merge_env.search.problem import build_problem
from merge_env.search.recipe import BASE, Recipe, param_merge

CONF = str(Path(__file__).resolve().parents[2] / "conf")
ROOT = Path(__file__).resolve().parents[2]


def _cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "pool=tiny", f"pool.cache_dir={tmp_path / 'zoo'}", "agent=random", "budget=6",
                "logger=none", "run_name=test", f"run_dir={tmp_path / 'run'}",
                "n_report_preferences=2", *overrides,
            ],
        )  # fmt: skip


@pytest.fixture
def zoo_cache(tiny_zoo, tmp_path):
    # reuse the session's tiny zoo: point the pool's cache at the folder it was built in
    (tmp_path / "zoo").symlink_to(tiny_zoo.root.parent, target_is_directory=True)
    return tmp_path


def _independent_hypervolume(points: np.ndarray, ideal: np.ndarray) -> float:
    """HV above the origin of points / ideal, straight from moocore (no MergeGym code)."""
    f = points / ideal
    f = f[np.all(f > 0, axis=1)]
    return float(moocore.hypervolume(f, ref=np.zeros(len(ideal)), maximise=True)) if len(f) else 0.0


def test_runs_end_to_end_and_leaves_its_outputs(zoo_cache, tiny_zoo, monkeypatch):
    tmp_path = zoo_cache
    logged: dict = {}
    monkeypatch.setattr(Tracker, "log", lambda self, metrics, step=None: logged.update(metrics))
    # token accuracy: the tiny zoo's experts barely reach exact matches, so HV would be 0
    hv = run(_cfg(tmp_path, "preference=[0.6,0.2,0.2]", "evaluator.metric=token_accuracy"))
    out = tmp_path / "run"
    # the reported hypervolume is the one of the archive's scores over the best single models
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    cached = build_problem(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir,
                           cache_path=out / "eval_cache.sqlite", metric="token_accuracy")  # fmt: skip
    singles = np.stack([cached.score(Recipe.single(n), record=False, charge=False).vector
                        for n in sources])  # fmt: skip
    ideal = singles.max(axis=0)
    archive = np.array([[e["scores"][t.name] for t in tiny_zoo.tasks] for e in
                        map(json.loads, (out / "archive.jsonl").read_text().splitlines())])  # fmt: skip
    assert hv > 0 and hv == pytest.approx(_independent_hypervolume(archive, ideal), rel=1e-9)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hypervolume_search"] == hv
    best_single = max(_independent_hypervolume(v[None], ideal) for v in singles)
    assert summary["reference_hypervolume_search"]["best single model"] == pytest.approx(
        best_single, rel=1e-9
    )
    for name in [
        "archive.jsonl",
        "front_test.json",
        "front.png",
        "hypervolume.png",
        "summary.json",
    ]:
        assert (out / name).is_file(), name
    assert list((out / "recipes").glob("pref_*.yaml"))
    assert summary["evaluations"] <= 6 + 1e-9  # the grid below is never charged
    # the ceiling: a perfect model (every token right, 1 a task) over the best single models
    assert summary["hypervolume_ceiling"] == pytest.approx(np.prod(1 / ideal), rel=1e-9)
    assert summary["reference_headroom_test"] == pytest.approx(
        summary["hypervolume_ceiling"] / summary["reference_hypervolume_test"] - 1, rel=1e-12
    )
    assert summary["hypervolume_ceiling"] >= max(summary["hypervolume_search"],
                                                 summary["hypervolume_test"])  # fmt: skip
    # the grid reference: the references + every plain TIES merge of the 1/6 lattice, re-scored
    # here through a second problem and hypervolume'd by moocore
    experts = list(tiny_zoo.experts)
    sixths = [c for c in itertools.product(range(7), repeat=len(experts)) if sum(c) == 6]
    grid = [Recipe(merge=param_merge("ties", {e: x / 6 for e, x in zip(experts, c)}, base=BASE,
                                     density=0.5)) for c in sixths]  # fmt: skip
    assert summary["grid_merges"] == len(grid) == 28
    rows = [cached.score(r, record=False, charge=False).vector
            for r in [*cached.reference_recipes().values(), *grid]]  # fmt: skip
    assert summary["grid_hypervolume_search"] == pytest.approx(
        _independent_hypervolume(np.stack(rows), ideal), rel=1e-9
    )
    assert (
        summary["grid_hypervolume_search"]
        >= summary["reference_hypervolume_search"]["single models + plain merges"]
    )
    assert summary["grid_hypervolume_test"] >= summary["reference_hypervolume_test"]
    # the grid picked as the front is: its points non-dominated on search, scored on test
    tests = np.stack([cached.score(r, split="test", record=False, charge=False).vector
                      for r in [*cached.reference_recipes().values(), *grid]])  # fmt: skip
    rows = np.stack(rows)
    picked = [i for i, r in enumerate(rows) if not any(
        np.all(o >= r) and np.any(o > r) or (np.all(o == r) and j < i)
        for j, o in enumerate(rows))]  # fmt: skip
    assert summary["grid_front_size"] == len(picked) < len(rows)
    assert summary["grid_front_hypervolume_test"] == pytest.approx(
        _independent_hypervolume(tests[picked], ideal), rel=1e-9
    )
    assert summary["grid_front_hypervolume_test"] <= summary["grid_hypervolume_test"] + 1e-12
    # the tracker (W&B) gets the final hypervolumes and every baseline of the summary
    for key in ("hypervolume_test", "reference_hypervolume_test", "grid_hypervolume_search",
                "grid_hypervolume_test", "grid_front_hypervolume_test",
                "hypervolume_ceiling"):  # fmt: skip
        assert logged[f"charts/{key}"] == summary[key], key
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    assert model.config.num_hidden_layers >= 1


@pytest.mark.parametrize(
    "override, match",
    [
        ("+agent.batch_sise=3", "agent.batch_sise: unknown option"),
        ("budget=lots", "budget: expected"),
        ("env.beta=high", "env.beta: expected float"),
        ("+evaluator.batchsize=3", "evaluator.batchsize: unknown option"),
    ],
)
def test_bad_override_fails_before_work(zoo_cache, override, match):
    tmp_path = zoo_cache
    with pytest.raises(ConfigError, match=match):
        run(_cfg(tmp_path, override))
    assert not (tmp_path / "run" / "archive.jsonl").exists()


def test_resume_after_kill_loses_and_repeats_nothing(zoo_cache):
    tmp_path = zoo_cache
    args = [
        sys.executable, "-m", "experiments.run", "pool=tiny", f"pool.cache_dir={tmp_path / 'zoo'}",
        "agent=random", "budget=12", "logger=none", "run_name=k", f"run_dir={tmp_path / 'run'}",
        "n_report_preferences=1",
    ]  # fmt: skip
    archive = tmp_path / "run" / "archive.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if archive.exists() and len(archive.read_text().splitlines()) >= 3:
            break
        try:
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = [json.loads(x)["recipe_hash"] for x in archive.read_text().splitlines() if x.strip()]
    assert before, "the run should have scored something before the kill"
    subprocess.run(args, cwd=ROOT, env=env, check=True, capture_output=True)
    lines = archive.read_text().splitlines()
    hashes = [json.loads(x)["recipe_hash"] for x in lines]
    assert hashes[: len(before)] == before  # nothing lost
    assert len(hashes) == len(set(hashes))  # nothing scored twice
    ledger = tmp_path / "run" / "ledger.jsonl"
    spent = sum(json.loads(x)["cost"] for x in ledger.read_text().splitlines())
    assert spent <= 12 + 1e-9


def test_wandb_offline_writes_a_run_folder(zoo_cache):
    pytest.importorskip("wandb")
    tmp_path = zoo_cache
    cwd = Path.cwd()
    before = set((cwd / "wandb").glob("offline-run-*")) if (cwd / "wandb").is_dir() else set()
    run(_cfg(tmp_path, "logger=wandb", "logger.mode=offline", "budget=3"))
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs  # one W&B run per job, in the run folder
    after = set((cwd / "wandb").glob("offline-run-*")) if (cwd / "wandb").is_dir() else set()
    assert after == before, "a second, folder-less W&B run was started"


def test_resume_refuses_a_run_scored_on_another_pool(zoo_cache):
    tmp_path = zoo_cache
    run(_cfg(tmp_path, "budget=3"))
    state_file = tmp_path / "run" / "run_state.json"
    state = json.loads(state_file.read_text())
    assert state["search"]["pool"]  # the pool's fingerprint is recorded with the run
    state["search"]["pool"] = "0123456789abcdef"  # as if the pool's checkpoints had changed since
    state_file.write_text(json.dumps(state))
    before = (tmp_path / "run" / "archive.jsonl").read_text()
    with pytest.raises(ConfigError, match=r"other search settings \(pool: \"0123456789abcdef\" ->"):
        run(_cfg(tmp_path, "budget=3"))
    assert (tmp_path / "run" / "archive.jsonl").read_text() == before


def test_resume_refuses_other_search_settings_naming_each_key(zoo_cache):
    tmp_path = zoo_cache
    run(_cfg(tmp_path, "budget=3"))
    archive = tmp_path / "run" / "archive.jsonl"
    before = archive.read_text()
    with pytest.raises(ConfigError) as err:
        run(_cfg(tmp_path, "budget=4", "env.beta=0.05", "agent.batch_size=4"))
    message = str(err.value)
    assert "resume refused" in message and "\n" not in message
    for key in ("budget: 3 -> 4", "env.beta: 0.02 -> 0.05", "agent.batch_size: 8 -> 4"):
        assert key in message
    assert "n_report_preferences" not in message
    assert archive.read_text() == before
    # settings that change neither scoring nor search (reporting, logging) resume as before
    run(_cfg(tmp_path, "budget=3", "n_report_preferences=1", "preference=null"))
    assert archive.read_text() == before


def test_a_torn_run_state_is_one_clear_error(zoo_cache):
    tmp_path = zoo_cache
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run_state.json").write_text('{"run_id": "0123')
    with pytest.raises(ConfigError, match=r"run_state.json: unreadable"):
        run(_cfg(tmp_path))


class Killed(BaseException):
    """What the fault-injection hook raises in place of SIGKILL."""


def test_a_kill_while_writing_run_state_leaves_a_readable_one(tmp_path, monkeypatch):
    real_open = builtins.open

    class Torn:
        """A file that takes half of what is written to it, then the process dies."""

        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise Killed

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def tearing_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return Torn(fh) if "run_state" in os.fspath(file) and "w" in mode else fh

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", tearing_open)
        m.setattr(io, "open", tearing_open)  # pathlib opens through io.open
        with pytest.raises(Killed):
            run_state(tmp_path)
    assert run_state(tmp_path)["run_id"]  # no torn file was left behind to trip on
    assert [p.name for p in tmp_path.iterdir()] == ["run_state.json"]


@pytest.mark.parametrize("on", [True, False])
def test_the_evaluator_settings_reach_the_problem(zoo_cache, on):
    from experiments.jobs import pool_and_tasks, scoring_problem

    cfg = _cfg(zoo_cache, f"evaluator.prompt_prefix={str(on).lower()}",
               "evaluator.prefix_cache_bytes=4096")  # fmt: skip
    pool, tasks = pool_and_tasks(cfg)
    run_dir = zoo_cache / "run"
    run_dir.mkdir()
    problem = scoring_problem(build_problem, pool.sources, tasks, pool, cfg, run_dir)
    assert problem.evaluator.prompt_prefix is on
    assert problem.evaluator.prefix_cache.max_bytes == 4096


def test_a_lattice_larger_than_the_limit_is_not_rescored(make_problem):
    """The grid reference skips a lattice over the limit (saying why) and scores nothing; at
    the limit it scores every merge, uncharged and never archived."""
    from experiments import report

    problem = make_problem()
    refs = problem.references()
    env = {"merge_method": "ties", "density": 0.5, "lattice_steps": 2}  # 6 merges of 3 experts
    before = problem.cache_hits, problem.spent, len(problem.archive)
    skipped = report.grid_summary(problem, env, refs, refs, limit=5)
    assert skipped == {"grid_merges": 6, "grid_skipped": "6 lattice merges > 5: not re-scored"}
    assert (problem.cache_hits, problem.spent, len(problem.archive)) == before
    done = report.grid_summary(problem, env, refs, refs, limit=6)
    assert done["grid_merges"] == 6 and "grid_skipped" not in done
    assert done["grid_hypervolume_search"] >= problem.hypervolume_of(np.stack(list(refs.values())))
    assert problem.spent == before[1] and len(problem.archive) == before[2]
    with pytest.raises(ConfigError, match="needs lattice_steps"):
        report.grid_summary(problem, {"merge_method": "ties", "density": 0.5}, refs, refs)
