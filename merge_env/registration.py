"""Gymnasium ids of MergeGym's environments (kept free of heavy imports)."""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "MergeGym/Merge-v0"
MO_ENV_ID = "MergeGym/MergeMO-v0"


def register_envs() -> None:
    """Register MergeGym's environments with Gymnasium (idempotent)."""
    for env_id, entry in ((ENV_ID, "MergeEnv"), (MO_ENV_ID, "MOMergeEnv")):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=f"merge_env.env:{entry}")
