"""MergeGym's merge world: checkpoints, operators, recipes, evaluation and the Gym environment."""

from merge_env.errors import (
    CheckpointError,
    ConfigError,
    MergeError,
    MergeGymError,
    RecipeError,
)
from merge_env.registration import register_envs

# Gymnasium has no plugin discovery, so the ids are registered when the package is imported;
# registration only records an entry-point string and imports nothing heavy.
register_envs()

__all__ = ["CheckpointError", "ConfigError", "MergeError", "MergeGymError", "RecipeError"]
