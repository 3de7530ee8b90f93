"""Gymnasium wrappers over MergeEnv: transformations of its actions and rewards, not env flags."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from merge_env.env import MergeEnv
from merge_env.errors import ConfigError


def repeat_penalised(reward: Any, cached: bool, penalty: float) -> Any:
    """A finished episode's reward less ``penalty`` when its recipe was already scored (the one
    rule behind RepeatPenalty and the batched vec env's form of it)."""
    return reward - penalty if cached and penalty else reward


class StopAtOnce(gym.ActionWrapper):
    """Parameter level only: every episode STOPs at its first step, so only the merge is chosen."""

    def __init__(self, env: MergeEnv) -> None:
        if env.mode != "free":
            raise ConfigError("level='param' needs env mode 'free' (aligned paths cannot STOP)")
        super().__init__(env)

    def action(self, action: np.ndarray) -> np.ndarray:
        """The same merge choice, with STOP as the source."""
        return self.env.unwrapped.with_stop(action)


class RepeatPenalty(gym.Wrapper):
    """Online shaping: a recipe already scored earns ``penalty`` less, since it adds nothing to
    the archive; without it the policy settles on a few recipes and stops spending the budget."""

    def __init__(self, env: gym.Env, penalty: float) -> None:
        super().__init__(env)
        self.penalty = float(penalty)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """As the env's step, minus the penalty at the end of a repeated recipe."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated:
            reward = repeat_penalised(reward, bool(info.get("cached")), self.penalty)
        return obs, reward, terminated, truncated, info
