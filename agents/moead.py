"""MOEA/D with the Tchebycheff decomposition over the flat genome: a decomposition baseline.

Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on Decomposition", IEEE TEVC
2007: N weight vectors spread over the simplex (Das & Dennis 1998), one subproblem per weight,
min_x max_k λ_k |f_k(x) − z_k| (eq. 3, z the best value seen per objective); each subproblem
breeds from its T nearest neighbours (SBX + polynomial mutation) and an offspring replaces every
neighbour whose scalarised value it beats. HM3 compares against MOEA baselines of this form.

Through pymoo's ``ParallelMOEAD`` in its ask/tell form, so that the problem scores every
generation of N offspring as one batch (``problem.score_many``: cache, ledger, Ray); the
sequential MOEA/D of the paper would score one offspring at a time. pymoo minimises, so it is
told minus the *normalised* scores (``MergeProblem.normalised``: 1 = the best single model per
task): unlike NSGA-II's ranking, the decomposition compares objectives on one scale. A generation
that the budget cuts short is not told: the search ends there.

With ``anchors`` on (agents/base.py) the anchors are scored first and those the genome can encode
join the initial population (the rest of it uniform), as in agents/nsga2.py. With ``screening``
on, each generation is screened at the cheap fidelity and its best ``screen_keep`` share (front
by front) promoted; the others are told their cheap scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pymoo.algorithms.moo.moead import ParallelMOEAD
from pymoo.config import Config
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.decomposition.tchebicheff import Tchebicheff
from pymoo.util.ref_dirs import get_reference_directions

from agents.genome import Genome, GenomeAgent
from agents.nsga2 import elite, pymoo_generations
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.problem import MergeProblem

log = logging.getLogger(__name__)

# pymoo prints (not logs) a hint about its optional compiled modules on first use
Config.warnings["not_compiled"] = False


def weight_vectors(n_objectives: int, n_partitions: int) -> np.ndarray:
    """The Das–Dennis simplex lattice: every weight vector with entries in multiples of 1/p."""
    return get_reference_directions("das-dennis", n_objectives, n_partitions=n_partitions)


class MOEADAgent(GenomeAgent):
    """pymoo MOEA/D (Tchebycheff), asked for genomes and told minus the normalised score vectors."""

    name = "moead"

    def __init__(
        self,
        seed: int = 0,
        n_partitions: int = 4,
        n_neighbors: int = 5,
        prob_neighbor_mating: float = 0.9,
        progress: bool = True,
        **genome_options: Any,
    ) -> None:
        super().__init__(seed, **genome_options)
        if n_partitions < 1:
            raise ConfigError(f"agent.n_partitions must be >= 1, got {n_partitions}")
        if n_neighbors < 2:
            raise ConfigError(f"agent.n_neighbors must be >= 2 (SBX mates two), got {n_neighbors}")
        if not 0.0 <= prob_neighbor_mating <= 1.0:
            raise ConfigError(
                f"agent.prob_neighbor_mating must be in [0, 1], got {prob_neighbor_mating}"
            )
        self.n_partitions = int(n_partitions)
        self.n_neighbors = int(n_neighbors)
        self.prob_neighbor_mating = float(prob_neighbor_mating)
        self.progress = bool(progress)
        self.generations = 0
        self.restarts = 0  # populations restarted after STALE_GENERATIONS fruitless generations

    def _algorithm(
        self, n_objectives: int, seeds: list[np.ndarray], genome: Genome, restart: int = 0
    ) -> ParallelMOEAD:
        """pymoo's batched MOEA/D; ``seeds`` (encoded anchors, or a restarted population's
        best) open its initial population, uniform genomes (drawn per ``restart``) fill it."""
        weights = weight_vectors(n_objectives, self.n_partitions)
        if len(weights) < 2:
            raise ConfigError(
                f"agent.n_partitions={self.n_partitions} gives {len(weights)} weight vector(s) "
                f"for {n_objectives} objective(s); MOEA/D needs at least 2"
            )
        options: dict[str, Any] = {}
        if seeds:
            seeds = seeds[: len(weights)]
            rng = np.random.default_rng([self.seed, restart] if restart else self.seed)
            rest = genome.sample(rng, len(weights) - len(seeds))
            options["sampling"] = np.vstack([*seeds, rest])
        return ParallelMOEAD(
            weights,
            n_neighbors=min(self.n_neighbors, len(weights)),
            # pymoo's default for 3+ objectives is PBI; Zhang & Li's Tchebycheff is asked for
            decomposition=Tchebicheff(),
            prob_neighbor_mating=self.prob_neighbor_mating,
            **options,
        )

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Ask/tell generations until the next uncached evaluation would overrun the budget."""
        budget_, genome = self.start(problem, budget)
        box = Problem(n_var=genome.dim, n_obj=len(problem.objectives), xl=0.0, xu=1.0)
        seeds = [x for x, _ in self.seed_genomes(problem, budget_, genome)]
        n_objectives = len(problem.objectives)

        def started(rows: list[np.ndarray], k: int) -> ParallelMOEAD:
            """A set-up MOEA/D opened by ``rows`` (restart ``k``; 0: the first population)."""
            algorithm = self._algorithm(n_objectives, rows, genome, k)
            # pymoo 0.6.2 draws every random number from a Generator seeded here, not numpy.random
            algorithm.setup(box, termination=NoTermination(), seed=self.seed + k, verbose=False)
            return algorithm

        def restart(old: Any, k: int) -> ParallelMOEAD:
            """A fresh MOEA/D opened by (up to half a population of) the old one's best."""
            return started(list(elite(old, genome.dim, len(old.ref_dirs) // 2)), k)

        algorithm = started(seeds, 0)
        problem.top  # noqa: B018 - the reference scores (uncharged) normalise the first tell
        return pymoo_generations(
            self, problem, budget_, genome, box, algorithm, normalised_objectives, restart
        )


def normalised_objectives(problem: MergeProblem, scored: list) -> np.ndarray:
    """MOEA/D's objectives: minus the normalised scores, so the decomposition compares tasks on
    one scale."""
    return -np.stack([problem.normalised(s.vector) for s in scored])
