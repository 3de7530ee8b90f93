"""SB3 callbacks of the PPO agent: the budget stop, its progress bar and merge/ metrics."""

from __future__ import annotations

from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from tqdm.auto import tqdm

from merge_env.search.budget import Budget


class BudgetCallback(BaseCallback):
    """Stops PPO before a step that could cost more than the budget has left (minus a reserve),
    or after ``max_repeats`` episodes in a row that only re-scored cached recipes."""

    def __init__(
        self, budget: Budget, reserve: float = 0.0, max_repeats: int = 64, progress: bool = False,
        per_step: int = 1,
    ) -> None:  # fmt: skip
        super().__init__()
        self.per_step = per_step  # recipes one vector step may score (n_envs)
        self.budget = budget
        self.reserve = reserve
        self.max_repeats = max_repeats
        self.episodes = 0
        self.repeats = 0
        self.progress = progress
        self.bar: Any = None

    def _on_training_start(self) -> None:
        if self.progress:
            self.bar = tqdm(total=round(self.budget.budget, 2), initial=round(self.budget.used, 2),
                            desc="ppo online (evaluations)", unit="eval", leave=False)  # fmt: skip

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
                self.repeats = self.repeats + 1 if info["cached"] else 0
                if self.bar is not None:
                    self.bar.update(round(self.budget.used - self.bar.n, 2))
                    self.bar.set_postfix(episodes=self.episodes, repeats=self.repeats)
        return self.affordable() and not self.stalled

    @property
    def stalled(self) -> bool:
        """Whether the policy has only re-scored cached recipes for ``max_repeats`` episodes."""
        return self.repeats >= self.max_repeats
