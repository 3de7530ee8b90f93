"""The agent interface: anything that searches a MergeProblem within an evaluation budget.

There is no name -> class table: the registry is ``conf/agent/``, one YAML per agent whose
``_target_`` names the class, so a new agent is one file here plus one YAML there.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from merge_env.search.archive import Archive
from merge_env.search.budget import Budget, BudgetExhausted
from merge_env.search.problem import MergeProblem, Scored
from merge_env.search.recipe import Recipe

log = logging.getLogger(__name__)


class BudgetBar:
    """One progress bar per search, in evaluations spent out of the budget (as PPO's).

    Off when ``enabled`` is false (``agent.progress=false``), and, tqdm's rule, when stderr is
    not a terminal (log files, CI, Slurm jobs), where it would only add noise.
    """

    def __init__(self, budget: Budget, desc: str, enabled: bool = True) -> None:
        self.budget = budget
        self.bar = tqdm(
            total=_count(budget.budget), desc=desc, unit="eval", leave=False,
            disable=None if enabled else True,
        )  # fmt: skip

    def update(self, **postfix: Any) -> None:
        """Move the bar to the evaluations spent so far; ``postfix`` is shown beside it."""
        self.bar.update(_count(self.budget.used - self.bar.n))
        if postfix:
            self.bar.set_postfix(postfix)

    def __enter__(self) -> BudgetBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _count(evaluations: float) -> float:
    """Evaluations as the bar shows them: whole numbers as ints (4, not 4.0), else 2 decimals."""
    return int(evaluations) if float(evaluations).is_integer() else round(evaluations, 2)


class Agent(ABC):
    """Searches a MergeProblem; every recipe it scores lands in ``problem.archive``."""

    name: str = "agent"
    # whether the search maximises the problem's scalar ``fitness`` (single-objective agents)
    uses_fitness: bool = False
    # set by the runner: where an agent may keep its own state (e.g. a policy) for resuming
    workdir: Path | None = None

    def __init__(self, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Spend at most ``budget`` evaluations on ``problem``; return its archive."""

    def evaluate(
        self, problem: MergeProblem, budget: Budget, recipe: Recipe, fidelity: str = "full"
    ) -> Scored:
        """Score one recipe within the budget; BudgetExhausted when it cannot be afforded."""
        if not problem.is_cached(recipe, fidelity) and budget.exhausted(problem.cost(fidelity)):
            raise BudgetExhausted
        return problem.score(recipe, fidelity=fidelity, source=self.name)
