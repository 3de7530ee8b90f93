"""Gymnasium ids of MergeGym's environments (kept free of heavy imports)."""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "MergeGym/Merge-v0"
MO_ENV_ID = "MergeGym/MergeMO-v0"


def register_envs() -> None:
    """Register MergeGym's environments with Gymnasium (idempotent).

    The multi-objective variant returns a vector reward, which Gymnasium's passive checker
    rejects ("reward must be a float") on every step; as MO-Gymnasium does for its own
    environments, its spec turns that checker off, so ``gym.make`` and ``mo_gymnasium.make``
    give the same environment.
    """
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="merge_env.env:MergeEnv")
    if MO_ENV_ID not in gym.registry:
        gym.register(id=MO_ENV_ID, entry_point="merge_env.env:MOMergeEnv", disable_env_checker=True)
