"""n MergeEnv episodes at once, their finished recipes scored as one batch.

SB3's ``DummyVecEnv`` steps its envs one after another, so n envs that each scored their own
recipe would score one at a time. Here every MergeEnv runs with ``defer_scoring=True``: a
finished episode hands back its recipe instead of a reward, and ``BatchScoringVecEnv`` scores all
the recipes finished in one vector step with a single ``MergeProblem.score_many`` call. With the
Ray evaluator (conf/evaluator/ray.yaml) that batch is spread over the actors; in-process it is
scored one after another, as before. Rewards, ``info`` and the archive are the same as with
n separate envs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper

from merge_env.env import MergeEnv
from merge_env.search.problem import MergeProblem
from merge_env.wrappers import repeat_penalised


class BatchScoringVecEnv(VecEnvWrapper):
    """Scores the recipes of every episode that ended in this vector step in one batch.

    ``repeat_penalty`` is taken off the reward of a recipe that was already scored (the
    vectorised form of merge_env.wrappers.RepeatPenalty).
    """

    def __init__(
        self,
        env_fns: list[Callable[[], gym.Env]],
        problem: MergeProblem,
        repeat_penalty: float = 0.0,
    ) -> None:
        super().__init__(DummyVecEnv(env_fns))
        self.problem = problem
        self.repeat_penalty = float(repeat_penalty)
        self.batches: list[int] = []  # size of each scored batch (for tests and logs)
        for env in self.venv.envs:  # type: ignore[attr-defined]
            if not getattr(env.unwrapped, "defer_scoring", False):
                raise ValueError("BatchScoringVecEnv needs MergeEnvs built with defer_scoring=True")

    def reset(self) -> Any:
        """Reset every env."""
        return self.venv.reset()

    def step_wait(self) -> tuple[Any, np.ndarray, np.ndarray, list[dict]]:
        """Step every env; score the finished episodes' recipes at once; fill rewards and infos."""
        obs, rewards, dones, infos = self.venv.step_wait()
        pending = [i for i, info in enumerate(infos) if "pending" in info]
        if not pending:
            return obs, rewards, dones, infos
        base: MergeEnv = self.venv.envs[pending[0]].unwrapped  # type: ignore[attr-defined]
        recipes = [infos[i]["pending"] for i in pending]
        # the front-building reward compares with the archive as it was before this batch
        front = base.reward == "front"
        prefs = np.stack([infos[i]["preference"] for i in pending])
        bests = base.archive_bests(prefs).tolist() if front else [None] * len(pending)
        scored = self.problem.score_many(recipes, fidelity=base.fidelity, source="env")
        self.batches.append(len({r.hash for r, s in zip(recipes, scored) if not s.cached}))
        rewards = np.array(rewards, dtype=np.float32, copy=True)
        seen: set[str] = set()
        for i, recipe, result, best in zip(pending, recipes, scored, bests):
            env: MergeEnv = self.venv.envs[i].unwrapped  # type: ignore[attr-defined]
            info = infos[i]
            length, pref = info["length"], info["preference"]
            # a recipe twice in one batch: the second is a repeat (it adds nothing)
            cached = result.cached or recipe.hash in seen
            seen.add(recipe.hash)
            reward = env.final_reward(result.vector, length, pref, cached=cached, best=best)
            rewards[i] = repeat_penalised(reward, cached, self.repeat_penalty)
            recipe = info.pop("pending")
            info.update(env.scored_info(recipe, result.vector, cached))
            info["preference"] = pref  # the finished episode's, not the auto-reset one's
        return obs, rewards, dones, infos


def batch_scoring_env(
    make_env: Callable[[], gym.Env], n_envs: int, problem: MergeProblem, repeat_penalty: float
) -> BatchScoringVecEnv:
    """``n_envs`` envs from ``make_env`` (each must defer its scoring), scored in batches."""
    return BatchScoringVecEnv([make_env for _ in range(n_envs)], problem, repeat_penalty)


__all__ = ["BatchScoringVecEnv", "batch_scoring_env"]
