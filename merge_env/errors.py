"""The project's own exceptions: each message names the file, tensor or key at fault."""


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
