"""SB3 callbacks of the PPO agent: the budget stop (with the stall's boosts), its progress bar
and merge/ metrics, and the checkpoint written at every rollout."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    MultiCategoricalDistribution,
)

from agents.base import BudgetBar
from merge_env.errors import ConfigError
from merge_env.search.budget import Budget


def temper_policy(policy: Any, factor: float) -> None:
    """Flatten an SB3 actor-critic's action distribution in place, for every observation: the
    logits of a (multi-)categorical action are divided by ``factor`` (softmax temperature
    ``factor``; the most likely action stays the most likely), a Gaussian's standard deviation
    is multiplied by it. ``factor`` 1 changes nothing."""
    if factor == 1.0:
        return
    if factor < 1.0:
        raise ConfigError(f"agent.temper: must be >= 1, got {factor}")
    dist = policy.action_dist
    with torch.no_grad():
        if isinstance(dist, DiagGaussianDistribution):
            policy.log_std.add_(math.log(factor))
        elif isinstance(dist, (CategoricalDistribution, MultiCategoricalDistribution)):
            policy.action_net.weight.div_(factor)
            policy.action_net.bias.div_(factor)
        else:
            raise ConfigError(f"agent.temper: cannot temper a {type(dist).__name__} policy")


class BudgetCallback(BaseCallback):
    """Stops PPO before a step that could cost more than the budget has left (minus a reserve).

    A stall is the policy's to handle: after ``max_repeats`` episodes in a row that only
    re-scored cached recipes, it is boosted and the count starts again: the policy is tempered
    (``temper_policy``: logits divided by ``temper``), so its very next episodes sample untried
    branches, and the entropy coefficient is multiplied by ``boost``, so the updates keep it
    spread. A new recipe restores ``base_ent_coef`` (the tempering stays: learning sharpens the
    policy again where the rewards say so). Only after ``max_boosts`` boosts in a row with no new
    recipe does it give up (``stalled``), e.g. when the space near the policy is exhausted.

    Why tempering: when every episode of a rollout repeats, the advantages carry no signal
    (SB3 normalises them per minibatch, so they are noise of unit scale) and Adam bounds each
    step, so a larger entropy coefficient alone barely moves a collapsed policy: on the third
    machine's zoo 1 (session 11, search seed 101) the policy kept re-proposing the 28 plain
    lattice merges and its first online phase gave up after 12 boosts.
    """

    def __init__(
        self, budget: Budget, reserve: float = 0.0, max_repeats: int = 64, progress: bool = False,
        per_step: int = 1, boost: float = 2.0, max_boosts: int = 3,
        base_ent_coef: float | None = None, temper: float = 1.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.per_step = per_step  # recipes one vector step may score (n_envs)
        self.budget = budget
        self.reserve = reserve
        self.max_repeats = max_repeats
        self.boost = float(boost)
        self.max_boosts = int(max_boosts)
        self.temper = float(temper)
        self.base_ent_coef = base_ent_coef
        self.episodes = 0
        self.new = 0  # episodes that scored a recipe not scored before
        self.repeats = 0
        self.boosts = 0  # entropy boosts since the last new recipe
        self.total_boosts = 0
        self.gave_up = False
        self.progress = progress
        self.bar: Any = None

    def _on_training_start(self) -> None:
        if self.progress:
            self.bar = BudgetBar(self.budget, "ppo online (evaluations)")

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def affordable(self) -> bool:
        """Whether the next step's evaluations fit (a vector step scores at most n_envs recipes)."""
        need = self.per_step * self.budget.problem.cost("full")
        return self.budget.remaining - self.reserve >= need - 1e-9

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "vector" in info:
                self.episodes += 1
                self.logger.record("merge/spent", self.budget.used)
                self.logger.record("merge/cached", float(info["cached"]))
                self._count(bool(info["cached"]))
                if self.bar is not None:
                    self.bar.update(episodes=self.episodes, repeats=self.repeats)
        return self.affordable() and not self.stalled

    def _count(self, cached: bool) -> None:
        model: Any = self.model
        base = self.base_ent_coef if self.base_ent_coef is not None else model.ent_coef
        self.base_ent_coef = base
        if not cached:
            self.new += 1
            self.repeats, self.boosts = 0, 0
            model.ent_coef = base
            return
        self.repeats += 1
        if self.repeats < self.max_repeats:
            return
        if self.boosts >= self.max_boosts:
            self.gave_up = True
            return
        self.boosts += 1
        self.total_boosts += 1
        self.repeats = 0
        model.ent_coef = base * self.boost**self.boosts
        temper_policy(model.policy, self.temper)
        self.logger.record("online/ent_coef", model.ent_coef)
        self.logger.record("online/boosts", self.total_boosts)

    @property
    def stalled(self) -> bool:
        """Whether the policy gave up: ``max_boosts`` entropy boosts found no new recipe."""
        return self.gave_up

    def state(self) -> dict[str, Any]:
        """The counters a resumed run continues from."""
        return {k: getattr(self, k) for k in ("episodes", "new", "repeats", "boosts",
                                             "total_boosts", "base_ent_coef")}  # fmt: skip

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from ``state()``'s counters."""
        for key, value in state.items():
            setattr(self, key, value)


class CheckpointCallback(BaseCallback):
    """Calls ``save`` at the start of every rollout, i.e. after the previous one was trained on:
    the policy, its optimiser, the phase and the counters are then consistent (nothing collected
    and not yet trained on), so a run killed later continues from there."""

    def __init__(self, save: Callable[[], None]) -> None:
        super().__init__()
        self.save = save
        self.saves = 0

    def _on_rollout_start(self) -> None:
        self.save()
        self.saves += 1

    def _on_step(self) -> bool:
        return True
