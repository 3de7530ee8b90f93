"""Gymnasium ids of MergeGym's environments, and the factories ``gym.make`` calls.

Kept free of heavy imports: registering records an entry-point string; the env, and the zoo a
``gym.make`` without a problem builds, are imported only when an environment is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gymnasium as gym

if TYPE_CHECKING:
    from merge_env.env import MergeEnv, MOMergeEnv
    from merge_env.search.problem import MergeProblem

ENV_ID = "MergeGym/Merge-v0"
MO_ENV_ID = "MergeGym/MergeMO-v0"


def make_merge_env(
    problem: MergeProblem | None = None, *, zoo: str = "default", **kwargs: Any
) -> MergeEnv:
    """MergeGym/Merge-v0: a MergeEnv over ``problem``, or over the ``zoo`` preset's problem
    (the zoo is built and cached on first use)."""
    from merge_env.env import MergeEnv

    return MergeEnv(problem if problem is not None else _zoo_problem(zoo), **kwargs)


def make_mo_merge_env(
    problem: MergeProblem | None = None, *, zoo: str = "default", **kwargs: Any
) -> MOMergeEnv:
    """MergeGym/MergeMO-v0: as ``make_merge_env``, with a vector reward."""
    from merge_env.env import MOMergeEnv

    return MOMergeEnv(problem if problem is not None else _zoo_problem(zoo), **kwargs)


def _zoo_problem(preset: str) -> MergeProblem:
    from merge_env.pools.spec import zoo_problem

    return zoo_problem(preset)


def register_envs() -> None:
    """Register MergeGym's environments with Gymnasium (idempotent).

    The multi-objective variant returns a vector reward, which Gymnasium's passive checker
    rejects ("reward must be a float") on every step; as MO-Gymnasium does for its own
    environments, its spec turns that checker off, so ``gym.make`` and ``mo_gymnasium.make``
    give the same environment.
    """
    if ENV_ID not in gym.registry:
        gym.register(id=ENV_ID, entry_point="merge_env.registration:make_merge_env")
    if MO_ENV_ID not in gym.registry:
        gym.register(
            id=MO_ENV_ID,
            entry_point="merge_env.registration:make_mo_merge_env",
            disable_env_checker=True,
        )
