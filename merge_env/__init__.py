"""MergeGym's merge world: checkpoints, operators, recipes, evaluation and the Gym environment."""

import importlib.abc
import importlib.util
import sys

from merge_env.errors import (
    CheckpointError,
    ConfigError,
    MergeError,
    MergeGymError,
    RecipeError,
)


class _RegisterWithGymnasium(importlib.abc.MetaPathFinder):
    """Registers MergeGym's environment ids once Gymnasium or ``merge_env.registration`` is
    imported, whichever comes first.

    Gymnasium has no plugin discovery, so the ids must be registered by importing this package;
    importing Gymnasium for that would put it (and numpy's start-up) on the path of every
    command, the merge CLI included. The module's own loader runs; registration follows it.
    """

    def find_spec(self, name, path, target=None):  # noqa: ANN001, ANN201 - importlib's protocol
        if name not in ("gymnasium", "merge_env.registration"):
            return None
        sys.meta_path.remove(self)  # one registration, by the first of the two imported
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module) -> None:  # noqa: ANN001
            exec_module(module)
            from merge_env.registration import register_envs

            register_envs()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


if "gymnasium" in sys.modules:
    from merge_env.registration import register_envs

    register_envs()
else:
    sys.meta_path.insert(0, _RegisterWithGymnasium())

__all__ = ["CheckpointError", "ConfigError", "MergeError", "MergeGymError", "RecipeError"]
