"""MergeGym's merge world: checkpoints, operators, recipes, evaluation and the Gym environment."""

from merge_env.errors import (
    CheckpointError,
    ConfigError,
    MergeError,
    MergeGymError,
    RecipeError,
)

__all__ = ["CheckpointError", "ConfigError", "MergeError", "MergeGymError", "RecipeError"]
