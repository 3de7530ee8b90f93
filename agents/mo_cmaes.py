"""CMA-ES restarted over sampled preferences: a multi-objective CMA-ES by scalarisation.

Each restart draws one preference λ ~ Dirichlet(alpha) on the simplex (HM3's preference prior,
``pareto.sample_preferences``) and runs CMA-ES (Hansen, "The CMA Evolution Strategy: A Tutorial",
arXiv:1604.00772, through the ``cma`` package as agents/cmaes.py) on the scalarisation of the
normalised score vector under λ, by default the Tchebycheff form −max_k λ_k (z_k − f_k)
(Zhang & Li, MOEA/D, IEEE TEVC 2007, eq. 3; ``pareto.scalarise``). Many single-objective runs,
each aimed at one point of the front, are the classic way to reach a front with a scalar
optimiser (Miettinen 1999, §3.4); the archive keeps every recipe scored, so the front is the
union of the runs.

* z is the normalised ideal point (1 per task: the best single model), raised to the best
  normalised score seen so far, as MOEA/D updates z, so that each restart aims beyond the best
  seen. (The signed form never penalises a recipe for beating z on a task; MOEA/D's |f_k − z_k|
  relies on this update for that.)
* Each preference may spend ``budget / n_preferences`` evaluations; a restart hands over earlier
  when ``cma`` stops on its own criteria or after ``patience`` generations without a new
  evaluation (cache hits are free, so a converged strategy could otherwise sample cached recipes
  for ever).
* With ``warm_start``, each restart starts from the genome scored so far (encodable anchors
  included) that is best under its own preference, so the budget refines the front instead of
  climbing from the centre again; without one scored yet, or without ``warm_start``, from the
  uniform merge (``Genome.identity``, as agents/cmaes.py).
* With ``anchors`` on (agents/base.py) the anchors are scored first. With ``screening`` on, each
  generation is screened at the cheap fidelity and its best ``screen_keep`` share (front by
  front) promoted; the strategy is told the scalarised cheap scores of the rest, but z and the
  warm starts read full-fidelity scores only (a score on a few examples is not comparable).
* A generation that the budget cuts short is not told: the search ends there.
"""

from __future__ import annotations

import logging
from typing import Any

import cma
import numpy as np

from agents.base import BudgetBar
from agents.cmaes import check_cma_settings, cma_strategy
from agents.genome import Genome, GenomeAgent
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.pareto import SCALARISATIONS, sample_preferences, scalarise
from merge_env.search.problem import MergeProblem, Scored

log = logging.getLogger(__name__)


class MOCMAESAgent(GenomeAgent):
    """CMA-ES over the flat genome, restarted per sampled preference on its scalarised score."""

    name = "mo_cmaes"

    def __init__(
        self,
        seed: int = 0,
        n_preferences: int = 8,
        alpha: float = 1.0,
        scalarisation: str = "tchebycheff",
        sigma0: float = 1.0 / 6.0,
        popsize: int | None = None,
        warm_start: bool = True,
        patience: int = 10,
        progress: bool = True,
        **genome_options: Any,
    ) -> None:
        super().__init__(seed, **genome_options)
        if n_preferences < 1:
            raise ConfigError(f"agent.n_preferences must be >= 1, got {n_preferences}")
        if not alpha > 0:
            raise ConfigError(f"agent.alpha must be > 0 (a Dirichlet concentration), got {alpha}")
        if scalarisation not in SCALARISATIONS:
            raise ConfigError(
                f"agent.scalarisation must be one of {SCALARISATIONS}, got {scalarisation!r}"
            )
        check_cma_settings(sigma0, popsize, patience)
        self.n_preferences = int(n_preferences)
        self.alpha = float(alpha)
        self.scalarisation = scalarisation
        self.sigma0 = float(sigma0)
        self.popsize = popsize
        self.warm_start = bool(warm_start)
        self.patience = int(patience)
        self.progress = bool(progress)
        self.preferences: list[np.ndarray] = []  # one per restart, in order
        self.ideal: np.ndarray | None = None  # z of the last search, in normalised units
        self.generations = 0

    def _strategy(self, x0: np.ndarray, rng: np.random.Generator) -> cma.CMAEvolutionStrategy:
        return cma_strategy(x0, self.sigma0, self.popsize, rng)

    def _start_point(
        self, genome: Genome, pref: np.ndarray, ideal: np.ndarray, seen: tuple[list, list]
    ) -> np.ndarray:
        """The identity genome, or (warm start) the scored genome best under ``pref``."""
        X, F = seen
        if not self.warm_start or not X:
            return genome.identity()
        values = np.atleast_1d(scalarise(np.stack(F), pref, ideal, self.scalarisation))
        return np.array(X[int(np.argmax(values))])

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """One CMA-ES run per sampled preference until the budget is spent."""
        budget_, genome = self.start(problem, budget)
        rng = np.random.default_rng(self.seed)
        k = len(problem.objectives)
        problem.top  # noqa: B018 - the reference scores (uncharged) normalise the first generation
        self.ideal = np.ones(k)  # z* in normalised units; raised to the best full score seen
        seen: tuple[list, list] = ([], [])  # genomes scored in full, their normalised scores
        seeds = self.seed_genomes(problem, budget_, genome)
        for x, scored in seeds:
            seen[0].append(x)
            seen[1].append(problem.normalised(scored.vector))
        self._raise_ideal(problem, [*(budget_.anchors or []), *(s for _, s in seeds)])
        share = budget_.budget / self.n_preferences
        self.preferences, self.generations = [], 0
        with BudgetBar(budget_, "mo_cmaes (evaluations)", self.progress) as bar:
            while True:
                pref = sample_preferences(1, k, rng, self.alpha)[0]
                self.preferences.append(pref)
                es = self._strategy(self._start_point(genome, pref, self.ideal, seen), rng)
                handover, stall = budget_.used + share, 0
                while True:
                    solutions = np.asarray(es.ask())
                    scored = self.evaluate_genomes(problem, budget_, genome, solutions)
                    self._raise_ideal(problem, scored)
                    for x, s in zip(solutions, scored):
                        if s.fidelity == "full":
                            seen[0].append(x)
                            seen[1].append(problem.normalised(s.vector))
                    if len(scored) == len(solutions):
                        F = np.stack([problem.normalised(s.vector) for s in scored])
                        values = scalarise(F, pref, self.ideal, self.scalarisation)
                        es.tell(list(solutions), (-np.atleast_1d(values)).tolist())
                        self.generations += 1
                    log.info("mo_cmaes: preference %d, generation %d, %.1f/%.1f spent",
                             len(self.preferences), self.generations, budget_.used,
                             budget_.budget)  # fmt: skip
                    bar.update(preference=len(self.preferences), generation=self.generations)
                    if self.done(budget_, scored, len(solutions)):
                        return problem.archive
                    stall = 0 if any(s.cost > 0 for s in scored) else stall + 1
                    if budget_.used >= handover - 1e-9 or stall >= self.patience or es.stop():
                        break

    def _raise_ideal(self, problem: MergeProblem, scored: list[Scored]) -> None:
        """MOEA/D's update of z: the best normalised full-fidelity score per task so far."""
        full = [problem.normalised(s.vector) for s in scored if s.fidelity == "full"]
        if full:
            self.ideal = np.maximum(self.ideal, np.max(full, axis=0))
