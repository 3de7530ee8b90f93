"""Checkpoint recycling (DESIGN §1.2): search linear-merge weights over N checkpoints, with baselines.

``python -m experiments.recycle`` (defaults: the default zoo's recycling pool, CMA-ES on the
macro-average). The genome agents of ``conf/agent/`` (CMA-ES, NSGA-II, random) search the same
space, α on the simplex (``agent.level=param``, ``env.merge_method=linear``). The objective
(``objective=macro``, as Khalifa et al. 2024) is the plain macro-average of the search-split task
scores; ``objective=normalised`` is the macro-average of score / z* (z* = the best single checkpoint
per task on the search split), mergekit-evolve's. CMA-ES maximises it, and it picks the optimised
merge (the archive's best), the best single checkpoint and the greedy soup. The table puts them side by side on the search and TEST splits
(TEST is never read by the search nor by any choice); the run folder also holds the weights plot
(``weights.png``), the main job's front and hypervolume plots and ``front_test.json``,
``optimised.yaml`` (+ ``optimised.mergekit.yaml``) and ``summary.json``.

Examples::

    python -m experiments.recycle                              # CMA-ES, budget 150
    python -m experiments.recycle budget=80 seed=1             # a smaller search
    python -m experiments.recycle agent=nsga2 budget=300       # the multi-objective front
    python -m experiments.recycle objective=normalised         # fitness: macro of score / z*

Your own checkpoints (HF folders of one architecture: stages of a run, data mixtures, learning
rates) are the ``recycling`` pool; tasks are JSONL files of ``{"prompt": ..., "answer": ...}``
lines, one file per task::

    python -m experiments.recycle pool=recycling \
        'pool.checkpoints=[/ckpt/step1000,/ckpt/step2000,/ckpt/lr3e-4]' \
        tasks=jsonl 'tasks.files={math: data/math.jsonl, code: data/code.jsonl}'

Checkpoints are named by folder name, or name them: ``'pool.checkpoints={early: /ckpt/a, late:
/ckpt/b}'``. The tokenizer is read from the first checkpoint (``pool.tokenizer=/path`` otherwise).
``device=cuda`` for a GPU, ``materialise=true`` to write the optimised merge as a HF checkpoint.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import torch

from merge_env.search.mergekit_export import to_mergekit

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from experiments import report  # noqa: E402
from experiments.cli import hydra_entry  # noqa: E402
from experiments.config_check import validate_run_config  # noqa: E402
from experiments.jobs import (  # noqa: E402
    check_same_search,
    pool_and_tasks,
    run_dir_of,
    run_state,
    scoring_problem,
    search_settings,
    seed_everything,
    tracker_kwargs,
)
from experiments.tracking import Tracker  # noqa: E402
from merge_env.errors import ConfigError, RecipeError  # noqa: E402
from merge_env.methods.recycle import (  # noqa: E402
    Candidate,
    active_count,
    baselines,
    check_objective,
    linear_recipe,
    macro_average,
    merge_weights,
    objective_value,
    problem_objective,
    recycling_checkpoints,
    recycling_problem,
)
from merge_env.search.archive import Entry  # noqa: E402
from merge_env.search.problem import MergeProblem  # noqa: E402

log = logging.getLogger("mergegym.recycle")
console = Console()


def make_problem(
    cfg: DictConfig, run_dir: Path, objective: str = "macro"
) -> tuple[MergeProblem, list[str]]:
    """The recycling problem of the configured pool and tasks (its fitness ``objective``),
    archive and cache in the run dir."""
    pool, tasks = pool_and_tasks(cfg)
    checkpoints = recycling_checkpoints(pool)
    build = functools.partial(recycling_problem, objective=objective)
    problem = scoring_problem(build, checkpoints, tasks, pool, cfg, run_dir)
    return problem, list(checkpoints)


def is_recycling_merge(entry: Entry, names: Sequence[str]) -> bool:
    """Whether an archive entry is a linear merge of the checkpoints (no inference path)."""
    try:
        merge_weights(entry.recipe, names)
    except RecipeError:
        return False  # e.g. an archive shared with a run of another recipe space
    return True


def best_entry(
    problem: MergeProblem, names: Sequence[str], objective: str = "macro"
) -> Entry | None:
    """The archive's linear merge with the highest objective (search split); the first of equals."""
    best, best_value = None, -np.inf
    for entry in problem.archive:
        if not is_recycling_merge(entry, names):
            continue
        value = objective_value(problem, entry.vector(problem.objectives), objective)
        if value > best_value:
            best, best_value = entry, value
    return best


def run(cfg: DictConfig) -> float:
    """Search, score the baselines, print the table; returns the optimised test macro-average."""
    validate_run_config(cfg)
    if not isinstance(cfg.get("materialise"), bool):
        raise ConfigError(f"materialise: expected true or false, got {cfg.get('materialise')!r}")
    objective = check_objective(cfg.get("objective", "macro"), "objective (conf/recycle.yaml)")
    threads = cfg.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads: expected an integer >= 1 or null, got {threads!r}")
        torch.set_num_threads(threads)
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "archive.jsonl").exists() and not cfg.resume:
        raise ConfigError(
            f"{run_dir}: a run is already there; pass resume=true or another run_name"
        )
    seed_everything(cfg.seed)
    agent = instantiate(cfg.agent)
    agent.workdir = run_dir / "agent"
    # CMA-ES maximises the problem's fitness, the objective; multi-objective and random agents
    # have none (the objective only picks their best merge)
    fitness = objective if agent.uses_fitness else None
    if fitness is not None:
        log.info("%s maximises the %s objective", agent.name, fitness)
    t0 = time.perf_counter()
    problem, names = make_problem(cfg, run_dir, objective)
    check_same_search(run_dir, problem, search_settings(cfg, problem))
    run_id = run_state(run_dir)["run_id"]
    tracker: Tracker = instantiate(cfg.logger, **tracker_kwargs(cfg.logger, cfg, run_dir, run_id))
    problem.ideal  # noqa: B018 - singles and the uniform merge, before the search, uncharged
    problem.listeners.append(
        lambda e: tracker.log_entry(e, problem.hypervolume_of(problem.archive.score_matrix()))
    )
    if hasattr(agent, "sb3_output"):
        agent.sb3_output = tracker.sb3_output()
    remaining = cfg.budget - problem.spent
    if remaining >= 1:
        agent.search(problem, remaining)
    entry = best_entry(problem, names, objective)
    if entry is None:
        raise ConfigError(f"{run_dir}: the search scored no linear merge (budget {cfg.budget})")
    rows = baselines(names, problem_objective(problem, objective))
    weights = merge_weights(entry.recipe, names)
    value = objective_value(problem, entry.vector(problem.objectives), objective)
    rows["optimised"] = Candidate(f"optimised ({agent.name})", weights, value)
    summary = _report(cfg, problem, names, rows, run_dir, tracker)
    summary.update(objective=objective, agent_fitness=fitness, evaluations=problem.spent, cache_hits=problem.cache_hits,
                   archive_size=len(problem.archive), recipe=entry.recipe_hash,
                   wall_s=round(time.perf_counter() - t0, 1))  # fmt: skip
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(f"run folder: {run_dir}   wall {summary['wall_s']} s   evaluations "
                  f"{problem.spent:.1f} (cache hits {problem.cache_hits})")  # fmt: skip
    tracker.finish()
    close = getattr(problem.backend, "close", None)
    if close is not None:
        close()
    return summary["rows"]["optimised"]["test"]["macro"]


def not_above_on_search(values: Mapping[str, float], tol: float = 1e-12) -> dict[str, str]:
    """The baselines the optimised merge is not above on the search split's objective, from each
    row's objective value (``values``, "optimised" among them): "tied" (equal values: the search
    did not choose between them; where the search scored the baseline's merge too, ``best_entry``
    kept whichever came first) or "below" (a baseline the search never scored, e.g. the greedy
    soup, is better). A TEST margin over such a baseline is not the search's doing."""
    best = values["optimised"]
    return {key: "tied" if value <= best + tol else "below"
            for key, value in values.items()
            if key != "optimised" and value >= best - tol}  # fmt: skip


def _scores(problem: MergeProblem, weights: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """Search and test scores of a merge: per task, the macro-average, the normalised one."""
    recipe = linear_recipe(weights)
    out = {}
    for split in ("search", "test"):
        v = problem.score(recipe, split=split, record=False, charge=False).vector
        out[split] = {**dict(zip(problem.objectives, v.tolist())), "macro": macro_average(v),
                      "norm_macro": macro_average(problem.normalised(v))}  # fmt: skip
    return out


def _report(
    cfg: DictConfig, problem: MergeProblem, names: list[str], rows: dict[str, Candidate],
    run_dir: Path, tracker: Tracker,
) -> dict:  # fmt: skip
    scores = {key: _scores(problem, c.weights) for key, c in rows.items()}
    metric = problem.metric or problem.tasks[0].metric
    objective = cfg.get("objective", "macro")
    table = Table(title=f"checkpoint recycling, N={len(names)} ({metric}; search / TEST; "
                        f"objective {objective})")  # fmt: skip
    for col in ("merge", "macro", "macro / z*", *problem.objectives, "active"):
        table.add_column(col, justify="left" if col == "merge" else "right")
    threshold = 1.0 / (10 * len(names))
    for key, c in rows.items():
        s, t = scores[key]["search"], scores[key]["test"]
        cells = [f"{s[k]:.3f} / {t[k]:.3f}" for k in ("macro", "norm_macro", *problem.objectives)]
        table.add_row(c.label, *cells, f"{active_count(c.weights)}/{len(names)}",
                      style="bold" if key == "optimised" else None)  # fmt: skip
    console.print(table)
    wt = Table(title=f"weights α (active: α > 1/(10N) = {threshold:.4f})")
    for col in ("checkpoint", "alone: macro search / TEST", "optimised α", "greedy α"):
        wt.add_column(col, justify="left" if col == "checkpoint" else "right")
    alone = {n: _scores(problem, {n: 1.0}) for n in names}
    for n in names:
        wt.add_row(n, f"{alone[n]['search']['macro']:.3f} / {alone[n]['test']['macro']:.3f}",
                   f"{rows['optimised'].weights[n]:.3f}", f"{rows['greedy'].weights[n]:.3f}")  # fmt: skip
    console.print(wt)
    png = weights_plot(names, rows, run_dir / "weights.png", threshold)
    front = _front_report(cfg, problem, names, rows, run_dir, tracker)
    _write_recipe(problem, rows["optimised"].weights, run_dir)
    beats, beats_norm = (
        all(scores["optimised"]["test"][col] > scores[k]["test"][col] for k in rows
            if k != "optimised")
        for col in ("macro", "norm_macro")
    )  # fmt: skip
    console.print(f"optimised merge {'beats' if beats else 'does NOT beat'} every baseline on the "
                  f"TEST macro-average ({'beats' if beats_norm else 'does NOT beat'} them on "
                  f"macro / z*); {active_count(rows['optimised'].weights)}/{len(names)} "
                  f"checkpoints above 1/(10N); weights plot: {png}")  # fmt: skip
    standing = not_above_on_search({k: c.value for k, c in rows.items()})
    if standing:
        said = ", ".join(
            f"{'tied with' if v == 'tied' else 'below'} {k}" for k, v in standing.items()
        )
        console.print(f"on the search split (the objective) the optimised merge is {said}: a "
                      "TEST margin over those is not the search's doing")  # fmt: skip
    summary = {
        "checkpoints": names, "metric": metric, "active_threshold": threshold,
        "rows": {k: {"label": c.label, "weights": c.weights, "active": active_count(c.weights),
                     **scores[k]} for k, c in rows.items()},
        "singles": alone, "greedy_trace": rows["greedy"].trace, "optimised_beats_baselines_test": beats,
        "optimised_beats_baselines_test_normalised": beats_norm, "optimised_not_above_on_search": standing,
        "front": front,
    }  # fmt: skip
    tracker.log({f"recycle/{k}_test_macro": scores[k]["test"]["macro"] for k in rows})
    tracker.log_table("recycle", ["merge", "search_macro", "test_macro"],
                      [[c.label, scores[k]["search"]["macro"], scores[k]["test"]["macro"]]
                       for k, c in rows.items()])  # fmt: skip
    tracker.log_image("weights", png)
    if cfg.materialise:
        out = problem.pool.materialise(linear_recipe(rows["optimised"].weights),
                                       run_dir / "checkpoint", overwrite=True)  # fmt: skip
        summary["checkpoint"] = str(out)
        console.print(f"materialised the optimised merge -> {out}")
    return summary


def _front_report(
    cfg: DictConfig, problem: MergeProblem, names: Sequence[str], rows: Mapping[str, Candidate],
    run_dir: Path, tracker: Tracker,
) -> dict:  # fmt: skip
    """The main job's front outputs: front_test.json, front.png, hypervolume.png; a summary."""
    refs = {
        **{f"model:{n}": linear_recipe({n: 1.0}) for n in names},
        **{f"merge:{k}": linear_recipe(rows[k].weights) for k in ("uniform", "greedy", "optimised")},
    }  # fmt: skip
    ref_vectors = {k: problem.score(r, record=False, charge=False).vector for k, r in refs.items()}
    archive = problem.archive
    front = [e for e in archive.front() if is_recycling_merge(e, names)]
    tests = report.test_scores(problem, front)
    report.save_front(run_dir / "front_test.json", problem, front, tests)
    title = f"{cfg.run_name}: recycling, N={len(names)} (search)"
    front_png = report.front_plot(
        problem, archive.score_matrix(), np.stack([e.vector(problem.objectives) for e in front]),
        ref_vectors, run_dir / "front.png", title,
    )  # fmt: skip
    singles = [v for k, v in ref_vectors.items() if k.startswith("model:")]
    plain = [v for k, v in ref_vectors.items() if k != "merge:optimised"]
    baseline_hv = {
        "best single checkpoint": max(problem.hypervolume_of(v) for v in singles),
        "singles + uniform + greedy": problem.hypervolume_of(np.stack(plain)),
    }
    hv_png = report.hypervolume_plot(
        problem.hypervolume_curve(), baseline_hv, run_dir / "hypervolume.png", title
    )
    hv = problem.hypervolume_of(archive.score_matrix())
    hv_test = problem.hypervolume_of(np.stack(list(tests.values())))
    console.print(f"front: {len(front)} merges, hypervolume search {hv:.4f} | test {hv_test:.4f} "
                  f"(singles + uniform + greedy: search "
                  f"{baseline_hv['singles + uniform + greedy']:.4f}); {front_png}")  # fmt: skip
    tracker.log({"charts/hypervolume_final": hv, "charts/hypervolume_test": hv_test})
    tracker.log_image("front", front_png)
    tracker.log_image("hypervolume", hv_png)
    return {
        "size": len(front), "hypervolume_search": hv, "hypervolume_test": hv_test,
        "baseline_hypervolume_search": baseline_hv,
        "merges": [{"recipe": e.recipe_hash, "weights": merge_weights(e.recipe, names),
                    "search": e.scores,
                    "test": dict(zip(problem.objectives, tests[e.recipe_hash].tolist()))}
                   for e in front],
    }  # fmt: skip


def _write_recipe(problem: MergeProblem, weights: Mapping[str, float], run_dir: Path) -> None:
    recipe = linear_recipe(weights)
    (run_dir / "optimised.yaml").write_text(recipe.to_yaml())
    paths = {name: str(p) for name, p in problem.pool.paths.items()}
    try:
        stages = to_mergekit(recipe, paths, problem.pool.num_layers)
        (run_dir / "optimised.mergekit.yaml").write_text(
            yaml.safe_dump_all(stages, sort_keys=False)
        )
    except RecipeError as exc:  # a single checkpoint: nothing to merge
        log.info("optimised recipe has no mergekit form: %s", exc)


def weights_plot(
    names: Sequence[str], rows: Mapping[str, Candidate], path: Path, threshold: float
) -> Path:
    """Bar chart of α per checkpoint for the optimised, greedy and uniform merges."""
    keys = [k for k in ("optimised", "greedy", "uniform") if k in rows]
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4))
    for i, key in enumerate(keys):
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, [rows[key].weights[n] for n in names],
               width, label=rows[key].label)  # fmt: skip
    ax.axhline(threshold, ls="--", c="gray", lw=1, label="1/(10N)")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("weight α")
    ax.set_title("recycling merge weights")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


main = hydra_entry("recycle", run, log)


if __name__ == "__main__":
    main()
