"""CMA-ES on the macro-average of normalised task scores: mergekit-evolve's single-objective set-up.

Covariance Matrix Adaptation Evolution Strategy (Hansen & Ostermeier 2001; Hansen, "The CMA
Evolution Strategy: A Tutorial", arXiv:1604.00772) through the ``cma`` package, as in
mergekit-evolve and in the parameter-space search of Akiba et al. 2024 (Evolutionary Optimization
of Model Merging Recipes). Defaults follow mergekit-evolve: the genome lives in [0, 1]^d (``cma``'s
bound transform), sigma0 = 1/6, ``cma``'s default population 4 + floor(3 ln d), and the search
starts from the uniform merge (agents/genome.py, ``Genome.identity``). The fitness is the
problem's (``MergeProblem.fitness``): by default the mean over tasks of score / z* (z* = best
single pool model per task), the published macro-average; the recycling problem states its own.

With ``anchors`` on (agents/base.py), the anchors are scored first, and the strategy starts
from the best one the genome can encode (by fitness; a pool model as it is cannot be encoded:
its embeddings and head are no merge's), else from the uniform merge. With ``screening`` on, each
generation is screened at the cheap fidelity and its best ``screen_keep`` share promoted; the
strategy is told the full fitness of the promoted and the cheap fitness of the rest (the best
recipe is tracked on full scores only).

Every generation is told, the last partial one too, as long as it holds at least mu solutions
and at least 3 with ``cma``'s mirrored samples (``cma`` refuses fewer). Cache hits are free, so a converged strategy could sample only cached
recipes for ever: after ``patience`` generations without a new evaluation, or when ``cma`` stops
on its own criteria, the strategy restarts from the start point with a fresh random stream.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import cma
import numpy as np

from agents.base import BudgetBar
from agents.genome import Genome, GenomeAgent
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.problem import MergeProblem, Scored
from merge_env.search.recipe import Recipe

log = logging.getLogger(__name__)


class CMAESAgent(GenomeAgent):
    """CMA-ES over the flat genome, minimising minus the macro-average normalised score."""

    name = "cmaes"
    uses_fitness = True  # ranks samples by problem.fitness

    def __init__(
        self,
        seed: int = 0,
        sigma0: float = 1.0 / 6.0,
        popsize: int | None = None,
        random_init: bool = False,
        patience: int = 10,
        progress: bool = True,
        **genome_options: Any,
    ) -> None:
        super().__init__(seed, **genome_options)
        check_cma_settings(sigma0, popsize, patience)
        self.sigma0 = float(sigma0)
        self.popsize = popsize
        self.random_init = bool(random_init)
        self.patience = int(patience)
        self.progress = bool(progress)
        self.best_recipe: Recipe | None = None
        self.best_value = -np.inf
        self.generations = 0
        self.restarts = 0

    def _strategy(
        self, genome: Genome, rng: np.random.Generator, start: np.ndarray | None = None
    ) -> cma.CMAEvolutionStrategy:
        if start is not None:
            x0 = start
        else:
            x0 = rng.random(genome.dim) if self.random_init else genome.identity()
        return cma_strategy(x0, self.sigma0, self.popsize, rng)

    def _track(self, problem: MergeProblem, scored: Scored) -> None:
        """Keep the best full-fidelity recipe seen (a cheap screening score is not comparable)."""
        value = problem.fitness(scored.vector)
        if scored.fidelity == "full" and value > self.best_value:
            self.best_recipe, self.best_value = scored.recipe, value

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Ask/tell until the next uncached evaluation would overrun the budget."""
        budget_, genome = self.start(problem, budget)
        rng = np.random.default_rng(self.seed)
        self.best_recipe, self.best_value = None, -np.inf
        self.generations = self.restarts = 0
        problem.ideal  # noqa: B018 - the reference scores, outside the budget, before the first tell
        encodable = self.seed_genomes(problem, budget_, genome)
        start = max(encodable, key=lambda a: problem.fitness(a[1].vector))[0] if encodable else None
        for s in [*(budget_.anchors or []), *(s for _, s in encodable)]:
            self._track(problem, s)
        es = self._strategy(genome, rng, start)
        stall = 0
        with BudgetBar(budget_, "cmaes (evaluations)", self.progress) as bar:
            while True:
                solutions = es.ask()
                scored = self.evaluate_genomes(problem, budget_, genome, np.asarray(solutions))
                values = [problem.fitness(s.vector) for s in scored]
                for s in scored:
                    self._track(problem, s)
                # cma refuses a generation under mu, or under 3 counting its mirrored samples
                if len(scored) >= max(es.sp.weights.mu, 3 - es.sp.lam_mirr):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # a partial last generation is intended
                        es.tell(solutions[: len(scored)], [-v for v in values])
                    self.generations += 1
                log.info("cmaes: generation %d, best macro-average %.4f, %.1f/%.1f spent",
                         self.generations, self.best_value, budget_.used, budget_.budget)  # fmt: skip
                bar.update(generation=self.generations, best=f"{self.best_value:.4f}")
                if self.done(budget_, scored, len(solutions)):
                    return problem.archive
                stall = 0 if any(s.cost > 0 for s in scored) else stall + 1
                if stall >= self.patience or es.stop():
                    log.info("cmaes: restart %d (%s)", self.restarts + 1,
                             "stalled on cached recipes" if stall else dict(es.stop()))  # fmt: skip
                    es, stall = self._strategy(genome, rng, start), 0
                    self.restarts += 1


def check_cma_settings(sigma0: float, popsize: int | None, patience: int) -> None:
    """ConfigError naming the key when a CMA-ES setting (of CMA-ES or MO-CMA-ES) is out of range."""
    if not 0.0 < sigma0 <= 1.0:
        raise ConfigError(f"agent.sigma0 must be in (0, 1], got {sigma0}")
    if popsize is not None and popsize < 2:
        raise ConfigError(f"agent.popsize must be >= 2 or null, got {popsize}")
    if patience < 1:
        raise ConfigError(f"agent.patience must be >= 1, got {patience}")


def cma_strategy(
    x0: np.ndarray, sigma0: float, popsize: int | None, rng: np.random.Generator
) -> cma.CMAEvolutionStrategy:
    """A quiet CMA-ES on the unit box whose samples come from ``rng`` (seeded, no global state)."""
    opts: dict[str, Any] = {
        "bounds": [0.0, 1.0],
        # draw from our Generator: cma's own seeding reseeds numpy's global state
        "randn": lambda *shape: rng.standard_normal(shape),
        "seed": np.nan,
        "verbose": -9,
        "verb_disp": 0,
        "verb_log": 0,
    }
    if popsize is not None:
        opts["popsize"] = int(popsize)
    return cma.CMAEvolutionStrategy(x0, sigma0, opts)
