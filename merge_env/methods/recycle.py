"""Checkpoint recycling (DESIGN §1.2): linear merges Σ α_i θ_i of N checkpoints, α on the simplex.

Khalifa et al. 2024, "If You Can't Use Them, Recycle Them: Optimizing Merging at Scale Mitigates
Performance Tradeoffs" (arXiv:2412.04144): checkpoints of one architecture left over from training
(stages, data mixtures, learning rates) each trade the tasks off differently; a linear merge whose
weights CMA-ES tunes on the macro-average task score beats every single checkpoint and the plain
merges, and the good merges keep nearly every checkpoint in.

The recycling problem is a MergeProblem whose recipes are plain linear merges (so the archive,
cache, plots and logging are the main job's): the N checkpoints are the pool's fine-tunes, and
``base`` is an alias of the first checkpoint. ModelPool needs a base for the tensor layout; the
linear operator ignores it, and RecyclingProblem's references (the ideal point z*) are the N
checkpoints and their uniform merge only, so nothing outside the N enters a merge or z*.

The objective (the search's fitness, and what picks the optimised merge, the best single checkpoint
and the greedy soup) is the plain macro-average of the task scores, as published; ``normalised``
(the macro-average of score / z*, mergekit-evolve's and agents/cmaes.py's own fitness) is the
alternative. The problem states it through its ``fitness`` seam (``RecyclingProblem(objective=...)``),
which a single-objective agent such as CMA-ES maximises.

Baselines, scored by the same objective: every single checkpoint, the uniform merge (a uniform
model soup) and the greedy soup of Wortsman et al. 2022 ("Model soups", ICML, Algorithm 1:
ingredients sorted by held-out score, each kept when the soup's held-out score does not drop).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merge_env.errors import ConfigError, RecipeError
from merge_env.pools.spec import PoolSpec
from merge_env.scoring.tasks.task import Task
from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import BASE, MERGED, Recipe, param_merge

Weights = dict[str, float]
Objective = Callable[[Mapping[str, float]], float]
# "macro": mean task score (Khalifa et al. 2024); "normalised": mean of score / z* (mergekit-evolve)
OBJECTIVES: tuple[str, ...] = ("macro", "normalised")


# -- the pool ------------------------------------------------------------------------------------
def checkpoint_folders(
    checkpoints: Sequence[str | Path] | Mapping[str, str | Path], where: str = "checkpoints"
) -> dict[str, Path]:
    """Name -> folder of the N checkpoints: a mapping as given, a list named by folder name."""
    if isinstance(checkpoints, str | Path):
        raise ConfigError(f"{where}: give a list of checkpoint folders or a name: folder mapping")
    if isinstance(checkpoints, Mapping):
        items = [(str(k), Path(v).expanduser()) for k, v in checkpoints.items()]
    else:
        items = [(Path(p).expanduser().name, Path(p).expanduser()) for p in checkpoints]
    out: dict[str, Path] = {}
    for name, path in items:
        if name in out:
            raise ConfigError(
                f"{where}: two checkpoints named {name!r} ({out[name]}, {path}); "
                "name them with a mapping {name: folder}"
            )
        if name in (BASE, MERGED):
            raise ConfigError(f"{where}: {name!r} is a reserved source name ({path}); rename it")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{where}[{name!r}]: {path} has no config.json")
        out[name] = path
    if len(out) < 2:
        raise ConfigError(f"{where}: recycling needs at least 2 checkpoints, got {len(out)}")
    return out


def recycling_sources(checkpoints: Mapping[str, Path]) -> dict[str, Path]:
    """ModelPool sources: ``base`` (an alias of the first checkpoint, for the layout), then the N."""
    first = next(iter(checkpoints.values()))
    return {BASE: first, **checkpoints}


def folder_pool(
    checkpoints: Sequence[str] | Mapping[str, str],
    tokenizer: str | None = None,
    name: str = "recycling",
) -> PoolSpec:
    """A recycling pool of the user's own HF checkpoint folders (one architecture)."""
    folders = checkpoint_folders(checkpoints, "pool.checkpoints")
    tokenizer_dir = Path(tokenizer).expanduser() if tokenizer else next(iter(folders.values()))
    return PoolSpec(
        name=name, sources=recycling_sources(folders), tokenizer_dir=tokenizer_dir,
        extra={"recycling": folders},
    )  # fmt: skip


def recycling_checkpoints(pool: PoolSpec) -> dict[str, Path]:
    """The checkpoints a pool offers for recycling (``extra["recycling"]``: the zoo's, or a list)."""
    listed = pool.extra.get("recycling")
    if not listed:
        raise ConfigError(
            f"pool {pool.name!r} lists no recycling checkpoints (extra['recycling']); use "
            "pool=zoo or pool=recycling pool.checkpoints=[folder, ...]"
        )
    return checkpoint_folders(listed, f"pool {pool.name!r} recycling")  # type: ignore[arg-type]


class RecyclingProblem(MergeProblem):
    """A MergeProblem over N checkpoints whose references are the N alone and their uniform merge.

    The main job's references also hold the ``base`` and task-vector merges against it; here the
    base is only an alias of the first checkpoint, so those would be duplicates or meaningless
    (and cost evaluations). The ideal point z* is thus the best of the N checkpoints per task.
    """

    def __init__(self, *args: Any, objective: str = "macro", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = check_objective(objective)

    def fitness(self, vector: np.ndarray) -> float:
        """The recycling objective of a raw score vector (``objective_value``)."""
        return objective_value(self, vector, self.objective)

    def reference_recipes(self) -> dict[str, Recipe]:
        """Every checkpoint alone (``model:<name>``) and the uniform merge (``merge:linear``)."""
        names = self.pool.experts
        refs = {f"model:{name}": Recipe.single(name) for name in names}
        refs["merge:linear"] = linear_recipe(uniform(names))
        return refs


def recycling_problem(
    checkpoints: Mapping[str, Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    *,
    objective: str = "macro",
    **kwargs: Any,
) -> RecyclingProblem:
    """The RecyclingProblem over N checkpoints, whose fitness is ``objective``
    (``build_problem`` keyword arguments pass through).

    ``build_problem`` wires the pool, evaluator, cache, archive and ledger; the same parts are
    handed to a RecyclingProblem, so only the references differ from the main job's problem.
    """
    wired = build_problem(recycling_sources(checkpoints), tasks, tokenizer_dir, **kwargs)
    cheap = wired.cheap_evaluator.max_examples if wired.cheap_evaluator is not None else None
    return RecyclingProblem(
        wired.pool, wired.tasks, wired.evaluator, wired.archive, metric=wired.metric,
        cheap_examples=cheap, reference_point=wired.reference_point,
        ledger_path=wired.ledger.path, objective=objective,
    )  # fmt: skip


# -- weights and recipes -------------------------------------------------------------------------
def on_simplex(weights: Mapping[str, float], where: str = "weights") -> Weights:
    """The weights divided by their sum; ConfigError when one is negative or not finite."""
    w = {str(k): float(v) for k, v in weights.items()}
    bad = {k: v for k, v in w.items() if not math.isfinite(v) or v < 0}
    if bad or not w:
        raise ConfigError(f"{where}: need finite non-negative weights, got {bad or w}")
    total = sum(w.values())
    if total <= 0:
        raise ConfigError(f"{where}: the weights sum to zero: {w}")
    return {k: v / total for k, v in w.items()}


def uniform(names: Sequence[str]) -> Weights:
    """Equal weights over the names."""
    return {n: 1.0 / len(names) for n in names}


def linear_recipe(weights: Mapping[str, float]) -> Recipe:
    """The recipe Σ α_i θ_i for weights normalised onto the simplex (one checkpoint: itself)."""
    alpha = {k: v for k, v in on_simplex(weights).items() if v > 0}
    if len(alpha) == 1:
        return Recipe.single(next(iter(alpha)))
    return Recipe(merge=param_merge("linear", alpha, base=None))


def merge_weights(recipe: Recipe | Mapping[str, Any], names: Sequence[str]) -> Weights:
    """α of a single-checkpoint or linear recipe over ``names`` (zeros included), on the simplex;
    RecipeError for anything else (a path, another method or shell, unnormalised or per-part or
    negative weights), so an archive shared with another recipe space is skipped, not fatal."""
    r = recipe if isinstance(recipe, Recipe) else Recipe.from_dict(recipe)
    if r.path is not None:
        raise RecipeError(f"recipe {r.hash}: has an inference path; recycling merges have none")
    if r.merge is None:
        # the base is an alias of the first checkpoint
        source = names[0] if r.shell_source == BASE else r.shell_source
        raw = {source: 1.0}
    else:
        if r.merge.merge_method != "linear":
            raise RecipeError(f"recipe {r.hash}: merge method {r.merge.merge_method!r}, not linear")
        if r.merge.parameters.get("normalize", True) is not True:
            raise RecipeError(f"recipe {r.hash}: an unnormalised linear merge is not Σ α_i θ_i")
        if r.shell not in (None, MERGED):
            raise RecipeError(f"recipe {r.hash}: shell {r.shell!r}; recycling merges have none")
        raw = {}
        for m in r.merge.models:
            w = m.parameters.get("weight", 0.0)
            if isinstance(w, bool) or not isinstance(w, (int, float)):
                raise RecipeError(f"recipe {r.hash}: {m.model}'s weight {w!r} is not one number")
            raw[m.model] = raw.get(m.model, 0.0) + float(w)
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise RecipeError(f"recipe {r.hash}: names {unknown}, not among the checkpoints {names}")
    try:
        return on_simplex({n: raw.get(n, 0.0) for n in names}, f"recipe {r.hash}")
    except ConfigError as exc:  # negative or all-zero weights: not a recycling merge
        raise RecipeError(str(exc)) from exc


def active_count(weights: Mapping[str, float], n: int | None = None) -> int:
    """How many checkpoints weigh more than 1/(10 N) (Khalifa et al.: nearly all, in good merges)."""
    n = len(weights) if n is None else n
    return sum(1 for w in weights.values() if w > 1.0 / (10 * n))


def macro_average(vector: Sequence[float] | np.ndarray) -> float:
    """Mean of the task scores."""
    return float(np.mean(np.asarray(vector, dtype=float)))


# -- baselines -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """A named linear merge of the checkpoints with its search-split objective value."""

    label: str
    weights: Weights
    value: float
    trace: list[tuple[str, float, bool]] = field(default_factory=list)  # greedy: tried, kept


def greedy_soup(singles: Mapping[str, float], objective: Objective) -> Candidate:
    """Wortsman et al. 2022, Algorithm 1: add checkpoints by score while the soup does not drop.

    ``singles`` is each checkpoint's objective value alone; ties keep the given order. A
    candidate is kept when the uniform soup with it scores at least the soup without it.
    """
    order = sorted(singles, key=lambda n: -singles[n])
    soup, best = [order[0]], float(singles[order[0]])
    trace = [(order[0], best, True)]
    for name in order[1:]:
        value = float(objective(uniform([*soup, name])))
        kept = value >= best
        if kept:
            soup, best = [*soup, name], value
        trace.append((name, value, kept))
    label = f"greedy soup ({len(soup)}/{len(order)})"
    return Candidate(label, {n: (1.0 / len(soup) if n in soup else 0.0) for n in order}, best,
                     trace)  # fmt: skip


def baselines(names: Sequence[str], objective: Objective) -> dict[str, Candidate]:
    """Best single checkpoint, uniform merge and greedy soup, by ``objective`` (higher is better).

    ``objective`` maps simplex weights over ``names`` to the search-split value of their merge.
    """
    if len(names) < 2:
        raise ConfigError(f"recycling baselines need at least 2 checkpoints, got {list(names)}")
    singles = {n: float(objective({n: 1.0})) for n in names}
    best = max(names, key=lambda n: singles[n])  # the first of equals
    zeros = dict.fromkeys(names, 0.0)
    greedy = greedy_soup(singles, objective)
    return {
        "best single": Candidate(f"best single ({best})", {**zeros, best: 1.0}, singles[best]),
        "uniform": Candidate("uniform merge", uniform(names), float(objective(uniform(names)))),
        "greedy": Candidate(greedy.label, {**zeros, **greedy.weights}, greedy.value, greedy.trace),
    }


def check_objective(objective: str, where: str = "objective") -> str:
    """The objective's name, or ConfigError naming ``where`` when it is not one of OBJECTIVES."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"{where}: {objective!r} is not one of {', '.join(OBJECTIVES)}")
    return objective


def objective_value(problem: MergeProblem, vector: np.ndarray, objective: str = "macro") -> float:
    """The objective of a raw task-score vector: its macro-average, or that of score / z*."""
    check_objective(objective)
    return macro_average(problem.normalised(vector) if objective == "normalised" else vector)


def problem_objective(
    problem: MergeProblem, objective: str = "macro", source: str = "baseline"
) -> Objective:
    """Search-split objective of a merge given by its weights (``objective_value``), uncharged.

    The search's fitness is the same objective, so baselines and search are ranked by one number.
    """
    check_objective(objective)

    def value(weights: Mapping[str, float]) -> float:
        vector = problem.score(linear_recipe(weights), source=source, record=False,
                               charge=False).vector  # fmt: skip
        return objective_value(problem, vector, objective)

    return value
