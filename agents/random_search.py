"""Random search: genomes drawn uniformly from [0, 1]^d, scored in batches until the budget is spent.

The simplest black-box baseline (Bergstra & Bengio, Random Search for Hyper-Parameter
Optimization, JMLR 2012) over the same recipe space as MergeEnv (agents/genome.py). Batches of
``batch_size`` genomes are drawn at once so that a parallel back-end can score a batch together.
With ``anchors`` on the anchors are scored first; with ``screening`` on each batch is screened at
the cheap fidelity and its best ``screen_keep`` share promoted (agents/base.py).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from agents.base import BudgetBar
from agents.genome import GenomeAgent
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.problem import MergeProblem

log = logging.getLogger(__name__)


class RandomSearch(GenomeAgent):
    """Uniform random genomes, decoded to recipes and scored batch by batch."""

    name = "random"

    def __init__(
        self, seed: int = 0, batch_size: int = 8, progress: bool = True, **genome_options: Any
    ) -> None:
        super().__init__(seed, **genome_options)
        if batch_size < 1:
            raise ConfigError(f"agent.batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.progress = bool(progress)

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Score uniform random recipes until the next uncached one would overrun the budget."""
        budget_, genome = self.start(problem, budget)
        rng = np.random.default_rng(self.seed)
        self.seed_genomes(problem, budget_, genome)  # anchors and proposals, where on
        with BudgetBar(budget_, "random (evaluations)", self.progress) as bar:
            while True:
                X = genome.sample(rng, self.batch_size)
                scored = self.evaluate_genomes(problem, budget_, genome, X)
                log.info("random: %d scored, %.1f/%.1f evaluations spent",
                         len(scored), budget_.used, budget_.budget)  # fmt: skip
                bar.update()
                if self.done(budget_, scored, len(X)):
                    return problem.archive
