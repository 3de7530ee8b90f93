"""What the jobs share: run folders and their state, the resume check, the problem on the
configured back-end, the tracker's wiring. ``experiments.run`` and ``experiments.recycle`` both
build on it, so neither reaches into the other's private helpers."""

from __future__ import annotations

import json
import os
import random
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from merge_env.errors import ConfigError
from merge_env.pools.spec import PoolSpec, tasks_or_pool
from merge_env.scoring.parallel import RAY_OPTIONS, use_backend
from merge_env.scoring.tasks.task import Task
from merge_env.search.problem import MergeProblem


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_dir_of(cfg: DictConfig) -> Path:
    """The run folder: Hydra's output dir, or cfg.run_dir when called without Hydra."""
    if cfg.get("run_dir"):
        return Path(cfg.run_dir)
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(f"outputs/{cfg.run_name}")


STATE_FILE = "run_state.json"
# Settings that change neither what a run scores nor how it searches: where it runs and logs,
# how fast it scores, what it reports afterwards. The pool and tasks count by their content's
# fingerprints (a moved checkpoint folder is the same pool). Every other setting must match for
# a run folder to be resumed.
NOT_SEARCH = {
    "logger", "run_name", "run_dir", "resume", "device", "threads", "preference",
    "n_report_preferences", "reference_grid", "materialise", "pool", "tasks", "hydra",
}  # fmt: skip
NOT_SEARCH_IN = {
    "agent": {"device", "progress", "save_path"},
    "evaluator": {"batch_size", "backend", "prefix_cache_bytes", "prompt_prefix", *RAY_OPTIONS},
}


def read_state(run_dir: Path) -> dict[str, Any]:
    """The run folder's run_state.json ({} if none); ConfigError naming it if unreadable."""
    f = run_dir / STATE_FILE
    if not f.is_file():
        return {}
    try:
        state = json.loads(f.read_bytes())
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{f}: unreadable ({exc}); it holds the run's id and search settings: delete it "
            "to resume without checking them, or choose another run_name"
        ) from None
    return state


def write_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Replace run_state.json atomically: a kill leaves the old file or the new, never a torn one."""
    f = run_dir / STATE_FILE
    tmp = run_dir / f".{STATE_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(state, indent=2) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, f)
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(run_dir, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def run_state(run_dir: Path) -> dict[str, Any]:
    state = read_state(run_dir)
    if "run_id" not in state:
        state["run_id"] = uuid.uuid4().hex[:12]
        write_state(run_dir, state)
    return state


def search_settings(cfg: DictConfig, problem: MergeProblem) -> dict[str, Any]:
    """Every setting that changes what a run scores or how it searches, as {dotted key: value}:
    the config less NOT_SEARCH, plus the pool's and each task's fingerprint."""
    flat: dict[str, Any] = {}

    def add(key: str, value: Any, skip: set[str] | frozenset = frozenset()) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k not in skip:
                    add(f"{key}.{k}", v)
        else:
            flat[key] = value

    for key in cfg:
        if key not in NOT_SEARCH:
            node = cfg[key]
            value = (
                OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
            )
            add(str(key), value, NOT_SEARCH_IN.get(str(key), frozenset()))
    flat["pool"] = problem.pool.fingerprint
    flat.update({f"tasks.{t.name}": t.fingerprint for t in problem.tasks})
    return json.loads(json.dumps(flat))  # as run_state.json will hold it (tuples as lists)


def check_same_search(run_dir: Path, problem: MergeProblem, settings: dict[str, Any]) -> None:
    """Refuse to resume a run folder whose archive or ledger was made with other search settings,
    naming each differing key; record the settings of a new run."""
    state = read_state(run_dir)
    recorded = state.get("search")
    if recorded is None and "pool" in state:  # a run folder from before settings were recorded
        recorded, keys = {"pool": state["pool"]}, ["pool"]
    else:
        keys = sorted(set(recorded or {}) | set(settings))
    if recorded is not None and (len(problem.archive) or problem.spent > 0):
        missing = _UNSET
        diffs = [
            f"{k}: {_short(recorded.get(k, missing))} -> {_short(settings.get(k, missing))}"
            for k in keys
            if recorded.get(k, missing) != settings.get(k, missing)
        ]
        if diffs:
            raise ConfigError(
                f"{run_dir}: resume refused, its archive was scored with other search settings "
                f"({'; '.join(diffs)}); choose another run_name or delete the folder"
            )
    if state.get("search") != settings:
        state.pop("pool", None)
        write_state(run_dir, {**state, "search": settings})


_UNSET = object()  # a setting one of the two configs does not have


def _short(value: Any) -> str:
    if value is _UNSET:
        return "(unset)"
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def pool_and_tasks(cfg: DictConfig) -> tuple[PoolSpec, list[Task]]:
    """The configured pool and the tasks a run scores (the tasks group, else the pool's own)."""
    pool = instantiate(cfg.pool)
    return pool, tasks_or_pool(pool, instantiate(cfg.tasks) if cfg.get("tasks") else None)


def scoring_problem(
    build: Callable[..., MergeProblem],
    sources: Mapping[str, Path],
    tasks: list[Task],
    pool: PoolSpec,
    cfg: DictConfig,
    run_dir: Path,
) -> MergeProblem:
    """``build(sources, tasks, tokenizer_dir, ...)`` with the evaluator group's settings, archive
    and cache in the run dir, on the configured scoring back-end."""
    ev = cfg.evaluator
    problem = build(
        sources, tasks, pool.tokenizer_dir,
        archive_path=run_dir / "archive.jsonl", cache_path=run_dir / "eval_cache.sqlite",
        device=cfg.device, batch_size=ev.batch_size, max_examples=ev.max_examples,
        cheap_examples=ev.cheap_examples, metric=ev.metric,
        prefix_cache_bytes=ev.get("prefix_cache_bytes", 256 * 2**20),
        prompt_prefix=ev.get("prompt_prefix", True),
        merged_cache_bytes=ev.get("merged_cache_bytes"),
    )  # fmt: skip
    # evaluator=ray: recipes are scored on Ray actors; the archive and cache stay here
    options = OmegaConf.to_container(ev, resolve=True)
    ray_options = {k: v for k, v in options.items() if k in RAY_OPTIONS}  # type: ignore[union-attr]
    use_backend(problem, pool.tokenizer_dir, ev.get("backend", "local"), **ray_options)
    return problem


def tracker_kwargs(node: DictConfig, cfg: DictConfig, run_dir: Path, run_id: str) -> dict:
    """Keyword arguments the logger group's tracker needs beyond its YAML (W&B: run name, folder, id)."""
    target = str(node.get("_target_", ""))
    if not target.endswith("WandbTracker"):
        return {}
    return {
        # not recursive: run_config holds the logger's own node, whose _target_ Hydra would
        # otherwise instantiate as a second, folder-less W&B run
        "_recursive_": False,
        "name": cfg.run_name, "dir": str(run_dir), "run_id": run_id,
        "run_config": OmegaConf.to_container(cfg, resolve=True),
    }  # fmt: skip
