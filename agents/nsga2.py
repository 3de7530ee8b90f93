"""NSGA-II over the flat genome, maximising every task score: the multi-objective baseline.

Deb, Pratap, Agarwal & Meyarivan, "A Fast and Elitist Multiobjective Genetic Algorithm: NSGA-II",
IEEE TEVC 2002 (non-dominated sorting + crowding distance, SBX crossover, polynomial mutation),
through pymoo (Blank & Deb 2020) in its ask/tell form, so that the problem, not pymoo, scores the
recipes. pymoo minimises, so it is told minus the score vector. A generation that the budget cuts
short is not told: the search ends there.

With ``anchors`` on (agents/base.py) the anchors are scored first and those the genome can
encode join the initial population (the rest of it uniform, as pymoo samples it). With
``screening`` on, each generation is screened at the cheap fidelity and its best ``screen_keep``
share (front by front) promoted; the others are told their cheap scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.config import Config
from pymoo.core.evaluator import Evaluator
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.problems.static import StaticProblem

from agents.base import BudgetBar
from agents.genome import GenomeAgent
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.problem import MergeProblem

log = logging.getLogger(__name__)

# pymoo prints (not logs) a hint about its optional compiled modules on first use
Config.warnings["not_compiled"] = False
# generations in a row that score nothing new (every recipe cached: the population converged)
# before the algorithm restarts from its best solutions plus fresh uniform genomes
STALE_GENERATIONS = 20


class NSGA2Agent(GenomeAgent):
    """pymoo NSGA-II, asked for genomes and told the (negated) task score vectors."""

    name = "nsga2"

    def __init__(
        self, seed: int = 0, pop_size: int = 16, progress: bool = True, **genome_options: Any
    ) -> None:
        super().__init__(seed, **genome_options)
        if pop_size < 2:
            raise ConfigError(f"agent.pop_size must be >= 2, got {pop_size}")
        self.pop_size = int(pop_size)
        self.progress = bool(progress)
        self.generations = 0
        self.restarts = 0  # populations restarted after STALE_GENERATIONS fruitless generations

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Ask/tell generations until the next uncached evaluation would overrun the budget."""
        budget_, genome = self.start(problem, budget)
        box = Problem(n_var=genome.dim, n_obj=len(problem.objectives), xl=0.0, xu=1.0)
        seeds = [x for x, _ in self.seed_genomes(problem, budget_, genome, self.pop_size)][
            : self.pop_size
        ]

        def topped_up(rows: Any, rng: np.random.Generator) -> np.ndarray:
            """``rows`` and uniform genomes after them: a whole initial population."""
            return np.vstack([*rows, genome.sample(rng, self.pop_size - len(rows))])

        def started(sampling: np.ndarray | None, seed: int) -> NSGA2:
            """A set-up NSGA-II from ``sampling`` (None: pymoo's own uniform sampling)."""
            extra = {} if sampling is None else {"sampling": sampling}
            algorithm = NSGA2(pop_size=self.pop_size, **extra)
            # pymoo 0.6.2 draws every random number from a Generator seeded here, not numpy.random
            algorithm.setup(box, termination=NoTermination(), seed=seed, verbose=False)
            return algorithm

        def restart(old: Any, k: int) -> NSGA2:
            """A fresh NSGA-II seeded with (up to half a population of) the old one's best."""
            best = elite(old, genome.dim, self.pop_size // 2)
            return started(topped_up(best, np.random.default_rng([self.seed, k])), self.seed + k)

        rng = np.random.default_rng(self.seed)
        algorithm = started(topped_up(seeds, rng) if seeds else None, self.seed)
        return pymoo_generations(
            self, problem, budget_, genome, box, algorithm, problem_objectives, restart
        )


def problem_objectives(problem: MergeProblem, scored: list) -> np.ndarray:
    """NSGA-II's objectives: minus the raw score vectors (it ranks, so scale does not matter)."""
    return -np.stack([s.vector for s in scored])


def elite(algorithm: Any, dim: int, n: int) -> np.ndarray:
    """Up to ``n`` genomes of a pymoo algorithm's current optimum (none yet: an empty array),
    what a restart opens its fresh population with."""
    return algorithm.opt.get("X")[:n] if algorithm.opt is not None else np.empty((0, dim))


def pymoo_generations(
    agent: GenomeAgent,
    problem: MergeProblem,
    budget_: Any,
    genome: Any,
    box: Problem,
    algorithm: Any,
    objectives: Callable[[MergeProblem, list], np.ndarray],
    restart: Callable[[Any, int], Any] | None = None,
) -> Archive:
    """Ask/tell a set-up pymoo algorithm, one scored batch per generation, until the budget ends.

    A generation the budget cuts short is scored (its recipes are archived) but not told.
    Shared by every pymoo-based agent (NSGA-II, MOEA/D); ``objectives`` maps the scored batch
    to what the algorithm minimises. ``restart(old, k)`` (optional) returns the set-up algorithm
    that replaces ``old`` after ``STALE_GENERATIONS`` generations in a row spent nothing (its
    population only re-proposes scored recipes); ``agent.restarts`` counts them.
    """
    agent.generations = 0
    agent.restarts = 0
    stale = 0
    with BudgetBar(budget_, f"{agent.name} (evaluations)", agent.progress) as bar:
        while True:
            pop = algorithm.ask()
            X = pop.get("X")
            spent = budget_.used
            scored = agent.evaluate_genomes(problem, budget_, genome, X)
            stale = stale + 1 if budget_.used <= spent + 1e-12 else 0
            if len(scored) == len(X):
                Evaluator().eval(StaticProblem(box, F=objectives(problem, scored)), pop)
                algorithm.tell(infills=pop)
                agent.generations += 1
            log.info("%s: generation %d, %.1f/%.1f evaluations spent",
                     agent.name, agent.generations, budget_.used, budget_.budget)  # fmt: skip
            bar.update(generation=agent.generations)
            if agent.done(budget_, scored, len(X)):
                return problem.archive
            if restart is not None and stale >= STALE_GENERATIONS:
                agent.restarts += 1
                log.info("%s: %d generations scored nothing new; restart %d",
                         agent.name, stale, agent.restarts)  # fmt: skip
                algorithm, stale = restart(algorithm, agent.restarts), 0
