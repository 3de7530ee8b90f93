"""The main job: HM3 search on a pool, reported as a Pareto front (the README's first command).

``python -m experiments.run`` (defaults: the default zoo, PPO, W&B offline). Thin by design:
Hydra composes the config, ``run(cfg)`` wires pool -> problem -> agent -> report and returns the
final hypervolume (what a sweeper would optimise).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console

from experiments import report
from experiments.cli import hydra_entry
from experiments.config_check import validate_run_config
from experiments.jobs import (
    check_same_search,
    pool_and_tasks,
    run_dir_of,
    run_state,
    scoring_problem,
    search_settings,
    seed_everything,
    tracker_kwargs,
)
from experiments.tracking import Tracker
from merge_env.errors import ConfigError
from merge_env.search.pareto import sample_preferences
from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import Recipe

log = logging.getLogger("mergegym.run")
console = Console()


def make_problem(cfg: DictConfig, run_dir: Path) -> MergeProblem:
    """Pool and tasks from their groups, evaluator settings, archive and cache in the run dir."""
    pool, tasks = pool_and_tasks(cfg)
    return scoring_problem(build_problem, pool.sources, tasks, pool, cfg, run_dir)


def run(cfg: DictConfig) -> float:
    """Run the configured search; returns the final hypervolume on the search split."""
    validate_run_config(cfg)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    archive_file = run_dir / "archive.jsonl"
    if archive_file.exists() and not cfg.resume:
        raise ConfigError(
            f"{run_dir}: a run is already there; pass resume=true or another run_name"
        )
    seed_everything(cfg.seed)
    agent = instantiate(cfg.agent)  # cheap, and fails fast on a bad agent config
    agent.workdir = run_dir / "agent"
    t0 = time.perf_counter()
    problem = make_problem(cfg, run_dir)
    check_same_search(run_dir, problem, search_settings(cfg, problem))
    state = run_state(run_dir)
    tracker: Tracker = instantiate(
        cfg.logger,
        **tracker_kwargs(cfg.logger, cfg, run_dir, state["run_id"]),
    )
    resumed = len(problem.archive)
    if resumed:
        console.print(f"[bold]resuming[/bold] {run_dir}: {resumed} scored recipes, "
                      f"{problem.spent:.1f} evaluations already spent")  # fmt: skip
    refs = problem.references()
    ref_hv = {
        "best single model": max(problem.hypervolume_of(v) for n, v in refs.items()
                                 if n.startswith("model:")),
        "single models + plain merges": problem.hypervolume_of(np.stack(list(refs.values()))),
    }  # fmt: skip
    tracker.log({f"charts/hv_{k.replace(' ', '_')}": v for k, v in ref_hv.items()})
    problem.listeners.append(
        lambda entry: tracker.log_entry(
            entry, problem.hypervolume_of(problem.archive.score_matrix())
        )
    )
    if hasattr(agent, "sb3_output"):
        agent.sb3_output = tracker.sb3_output()
    remaining = cfg.budget - problem.spent
    if remaining >= 1:
        agent.search(problem, remaining)
    spend = {k: float(v) for k, v in (getattr(agent, "phase_spend", {}) or {}).items()}
    extra = {"wall_s": round(time.perf_counter() - t0, 1), "phases": spend}
    hv = _report(cfg, problem, tracker, run_dir, ref_hv, refs, extra)
    console.print(f"run folder: {run_dir}   wall {time.perf_counter() - t0:.1f} s   "
                  f"evaluations {problem.spent:.1f} (cache hits {problem.cache_hits})")  # fmt: skip
    tracker.finish()
    close = getattr(problem.backend, "close", None)  # a RayBackend's actors
    if close is not None:
        close()
    return hv


def _report(
    cfg: DictConfig,
    problem: MergeProblem,
    tracker: Tracker,
    run_dir: Path,
    ref_hv: dict[str, float],
    refs: dict[str, np.ndarray],
    extra: dict | None = None,
) -> float:
    """Write the front, plots, best recipes and summary.json (with ``extra``); returns the
    hypervolume on the search split."""
    archive = problem.archive
    front = archive.front()
    tests = report.test_scores(problem, front)
    ref_tests = report.reference_test_scores(problem)
    report.save_front(run_dir / "front_test.json", problem, front, tests)
    hv = problem.hypervolume_of(archive.score_matrix()) if len(archive) else 0.0
    hv_test = problem.hypervolume_of(np.stack(list(tests.values()))) if tests else 0.0
    ref_hv_test = problem.hypervolume_of(np.stack(list(ref_tests.values())))
    # a perfect model's hypervolume: the most any front can reach, so the most it can beat the
    # references by (a margin target above the headroom is out of reach by arithmetic)
    ceiling = problem.hypervolume_ceiling()
    title = f"{cfg.run_name}: HV {hv:.3f} (search)"
    front_png = report.front_plot(
        problem, archive.score_matrix() if len(archive) else np.zeros((0, len(problem.objectives))),
        np.stack([e.vector(problem.objectives) for e in front]) if front else np.zeros((0, 1)),
        refs, run_dir / "front.png", title,
    )  # fmt: skip
    hv_png = report.hypervolume_plot(
        problem.hypervolume_curve(), ref_hv, run_dir / "hypervolume.png", title
    )
    prefs = sample_preferences(
        cfg.n_report_preferences, len(problem.objectives), np.random.default_rng(cfg.seed)
    )
    scalarisation = cfg.env.get("scalarisation", "tchebycheff")
    best = report.write_best_recipes(problem, prefs, run_dir / "recipes", scalarisation)
    report.front_table(problem, front, tests, refs, ref_tests, console)
    summary = {
        "hypervolume_search": hv,
        "hypervolume_test": hv_test,
        "reference_hypervolume_search": ref_hv,
        "reference_hypervolume_test": ref_hv_test,
        "hypervolume_ceiling": ceiling,
        "reference_headroom_test": ceiling / ref_hv_test - 1.0 if ref_hv_test > 0 else None,
        "evaluations": problem.spent,
        "cache_hits": problem.cache_hits,
        "archive_size": len(archive),
        "front_size": len(front),
        **(extra or {}),  # wall seconds of the search, evaluations per phase (PPO)
    }
    if cfg.preference is not None:
        pref = np.asarray(list(cfg.preference), float)
        if pref.shape != (len(problem.objectives),) or (pref < 0).any() or pref.sum() <= 0:
            raise ConfigError(f"preference: need {len(problem.objectives)} non-negative weights")
        entry = problem.best(pref / pref.sum(), scalarisation)
        out = problem.pool.materialise(
            Recipe.from_dict(entry.recipe), run_dir / "checkpoint", overwrite=True
        )
        summary["checkpoint"] = {"path": str(out), "recipe": entry.recipe_hash,
                                 "preference": pref.tolist()}  # fmt: skip
        console.print(f"materialised best recipe for preference {pref.tolist()} -> {out}")
    grid = {}
    if cfg.get("reference_grid", True):
        # the references plus every plain merge of the env's weight lattice (uncharged, after the
        # search): how much the search adds to a grid over the parameter-level merge alone
        grid = report.grid_summary(problem, cfg.env, refs, ref_tests)
        summary.update(grid)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"hypervolume  search {hv:.4f} | test {hv_test:.4f}   "
        f"(single models + plain merges: search "
        f"{ref_hv['single models + plain merges']:.4f} | test {ref_hv_test:.4f}; "
        f"best single model: search {ref_hv['best single model']:.4f})"
    )
    if summary["reference_headroom_test"] is not None:
        console.print(
            f"             a perfect model: {ceiling:.4f}, so no front can beat the references "
            f"on test by more than {100 * summary['reference_headroom_test']:+.1f} % (this front: "
            f"{100 * (hv_test / ref_hv_test - 1):+.1f} %)"
        )
    if "grid_skipped" in summary:
        console.print(f"             plain-merge grid: {summary['grid_skipped']}")
    if "grid_hypervolume_search" in summary:
        console.print(
            f"             the references + the {summary['grid_merges']} plain merges of the "
            f"weight lattice: search {summary['grid_hypervolume_search']:.4f} | test "
            f"{summary['grid_hypervolume_test']:.4f} (its {summary['grid_front_size']} points "
            f"non-dominated on search, as the front is picked: test "
            f"{summary['grid_front_hypervolume_test']:.4f})"
        )
    # the final hypervolumes beside their baselines, so W&B compares runs against them too
    charts = {"charts/hypervolume_final": hv, "charts/hypervolume_test": hv_test,
              "charts/reference_hypervolume_test": ref_hv_test,
              "charts/hypervolume_ceiling": ceiling}  # fmt: skip
    charts.update({f"charts/{k}": v for k, v in grid.items() if "hypervolume" in k})
    tracker.log(charts)
    tracker.log_table(
        "front", ["recipe", "source", *[f"{n}_search" for n in problem.objectives],
                  *[f"{n}_test" for n in problem.objectives]],
        [[e.recipe_hash, e.source, *[e.scores[n] for n in problem.objectives],
          *np.asarray(tests[e.recipe_hash]).tolist()] for e in front],
    )  # fmt: skip
    tracker.log_image("front", front_png)
    tracker.log_image("hypervolume", hv_png)
    if best:
        tracker.log_artifact("best-recipes", "recipe", sorted((run_dir / "recipes").iterdir()))
    return hv


main = hydra_entry("config", run, log)


if __name__ == "__main__":
    main()
