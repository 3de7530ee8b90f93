"""The project's own exceptions: each message names the file, tensor or key at fault."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn


class MergeGymError(Exception):
    """Base class of every error MergeGym raises on purpose."""


class CheckpointError(MergeGymError):
    """A checkpoint directory or file is missing, corrupt or of an unknown architecture."""


class MergeError(MergeGymError):
    """A merge cannot be computed: shapes differ, a tensor is missing, a result is not finite."""


class RecipeError(MergeGymError):
    """A recipe (YAML, JSON or object) is malformed or refers to something that does not exist."""


class ConfigError(MergeGymError):
    """A configuration key or value is wrong."""


def exit_on_error(main: Callable[[], Any]) -> NoReturn:
    """Run a command-line ``main`` and exit with its status (an int; anything else is 0); a
    MergeGym error becomes one line ``error: ...`` on stderr and status 2, without a traceback
    (the Hydra jobs do the same in ``experiments.cli``)."""
    try:
        status = main()
    except MergeGymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(status if isinstance(status, int) else 0)
