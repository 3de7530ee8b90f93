"""Multi-objective TPE over the flat genome: Optuna's model-based baseline.

Tree-structured Parzen Estimator (Bergstra et al., "Algorithms for Hyper-Parameter Optimization",
NeurIPS 2011) in its multi-objective form MOTPE (Ozaki et al., "Multiobjective Tree-Structured
Parzen Estimator for Computationally Expensive Optimization Problems", GECCO 2020): the scored
trials are split into "good" and "bad" by non-dominated rank (ties broken by hypervolume
contribution), a Parzen density is fitted to each, and the next genome maximises their ratio.
Through Optuna's ``TPESampler`` on a study with one "maximize" direction per task, in its
ask/tell form, so that the problem, not Optuna, scores the recipes.

* Every gene is a float in [0, 1] named as ``Genome.gene_names`` says; ``multivariate`` fits
  one joint density over them (Falkner et al. 2018) instead of one per gene.
* ``batch_size`` trials are asked at once and scored as one batch (``problem.score_many``:
  cache, ledger, Ray); with ``constant_liar`` the trials still pending count as bad ones, so a
  batch spreads out instead of asking the same point ``batch_size`` times.
* Optuna is told the normalised scores (``MergeProblem.normalised``: 1 = the best single model
  per task), the units of the hypervolume the search is judged on.
* Trials of a batch that the budget cuts short are told as failed: the search ends there.

With ``anchors`` on (agents/base.py) the anchors are scored first and those the genome can encode
are added to the study as finished trials, so the Parzen estimators start from them. With
``screening`` on, each batch is screened at the cheap fidelity and its best ``screen_keep`` share
(front by front) promoted; the others are told their cheap scores.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.samplers import TPESampler
from optuna.trial import TrialState

from agents.base import BudgetBar
from agents.genome import GenomeAgent
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.problem import MergeProblem

log = logging.getLogger(__name__)


class TPEAgent(GenomeAgent):
    """Optuna multi-objective TPE, asked for genomes and told the normalised score vectors."""

    name = "tpe"

    def __init__(
        self,
        seed: int = 0,
        batch_size: int = 8,
        n_startup_trials: int = 10,
        n_ei_candidates: int = 24,
        multivariate: bool = True,
        constant_liar: bool = True,
        progress: bool = True,
        **genome_options: Any,
    ) -> None:
        super().__init__(seed, **genome_options)
        for key, value, least in (
            ("batch_size", batch_size, 1),
            ("n_startup_trials", n_startup_trials, 0),
            ("n_ei_candidates", n_ei_candidates, 1),
        ):
            if value < least:
                raise ConfigError(f"agent.{key} must be >= {least}, got {value}")
        self.batch_size = int(batch_size)
        self.n_startup_trials = int(n_startup_trials)
        self.n_ei_candidates = int(n_ei_candidates)
        self.multivariate = bool(multivariate)
        self.constant_liar = bool(constant_liar)
        self.progress = bool(progress)
        self.study: optuna.Study | None = None  # the last search's study, for inspection

    def _study(self, n_objectives: int) -> optuna.Study:
        sampler = TPESampler(
            seed=self.seed, n_startup_trials=self.n_startup_trials,
            n_ei_candidates=self.n_ei_candidates, multivariate=self.multivariate,
            constant_liar=self.constant_liar,
        )  # fmt: skip
        return optuna.create_study(directions=["maximize"] * n_objectives, sampler=sampler)

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Ask/tell batches of trials until the next uncached evaluation would overrun the budget."""
        # Optuna logs at INFO through its own stderr handler: each study created (and, under
        # study.optimize, each trial); the bar and our log say enough
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        budget_, genome = self.start(problem, budget)
        space = {name: FloatDistribution(0.0, 1.0) for name in genome.gene_names}
        self.study = study = self._study(len(problem.objectives))
        problem.top  # noqa: B018 - the reference scores (uncharged) normalise the first tell
        for x, scored in self.seed_genomes(problem, budget_, genome):
            params = dict(zip(space, np.clip(x, 0.0, 1.0).tolist()))
            values = problem.normalised(scored.vector).tolist()
            study.add_trial(optuna.trial.create_trial(params=params, distributions=space,
                                                      values=values))  # fmt: skip
        with BudgetBar(budget_, "tpe (evaluations)", self.progress) as bar:
            while True:
                trials = [study.ask(space) for _ in range(self.batch_size)]
                X = np.array([[t.params[name] for name in space] for t in trials])
                scored = self.evaluate_genomes(problem, budget_, genome, X)
                for trial, s in zip(trials, scored):
                    study.tell(trial, problem.normalised(s.vector).tolist())
                for trial in trials[len(scored) :]:
                    study.tell(trial, state=TrialState.FAIL)
                log.info("tpe: %d trials, %.1f/%.1f evaluations spent",
                         len(study.trials), budget_.used, budget_.budget)  # fmt: skip
                bar.update(trials=len(study.trials))
                if self.done(budget_, scored, len(X)):
                    return problem.archive
