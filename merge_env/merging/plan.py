"""A parameter-level merge as data: mergekit's ``models:`` schema, validated before any tensor is read.

Behaviour follows mergekit 0.1.5 so that an existing YAML gives the same tensors:
* inputs are the ``models`` in order, then ``base_model`` when it is not among them; methods
  without a base (linear) merge the base as one more input, with the top-level parameters;
* a per-model parameter falls back to the top-level ``parameters``, then to its default; a
  ``{filter, value}`` list with no matching entry falls through the same way;
* ``dtype`` casts the inputs before merging, ``out_dtype`` casts the result.
The streaming engine that runs a ParamMerge is ``merging/engine.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from merge_env.errors import MergeError, RecipeError

if TYPE_CHECKING:  # torch and the operators are imported when a recipe is validated, so the
    # lean linear merge (merging/lean.py) can build and print a ParamMerge without them
    import torch

    from merge_env.merging.methods.base import Operator

DTYPE_NAMES = ("float32", "float16", "bfloat16", "float64")
_KEYS = (
    "merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "seed",
    "exact_ties",
)  # fmt: skip
_UNSUPPORTED = {
    "slices": "layer slices are inference paths here: use a Recipe (merge_env/search/recipe.py)",
    "modules": "multi-module merges are not supported",
    "tokenizer": "tokenizer surgery is not supported; the base model's tokenizer is copied",
    "tokenizer_source": "only 'base' is supported (the base model's tokenizer is copied)",
    "chat_template": "chat templates are copied from the base model, not set by the recipe",
}
RECIPE_FILE = "mergekit_config.yml"  # mergekit's name, so its tools recognise our outputs


def _plain(value: Any) -> Any:
    """Parameters as plain dicts/lists (YAML- and JSON-serialisable)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dtype_of(name: Any, key: str, where: str) -> torch.dtype | None:
    """A mergekit dtype name (optionally ``torch.``-prefixed) as a torch dtype."""
    if name is None:
        return None
    key_name = str(name).removeprefix("torch.")
    if key_name not in DTYPE_NAMES:
        raise RecipeError(
            f"{where}: {key}: unknown dtype {name!r}; known: {', '.join(DTYPE_NAMES)}"
        )
    import torch

    return getattr(torch, key_name)


@dataclass(frozen=True)
class ModelRef:
    """One input model: a checkpoint path (or a pool name) and its per-model parameters."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamMerge:
    """A parameter-level merge in mergekit's ``models:`` schema (plus a seed for DARE)."""

    merge_method: str
    base_model: str | None
    models: tuple[ModelRef, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int = 0
    # False: equal magnitudes at a density cut are ranked by position, O(n), instead of by
    # mergekit's unstable full sort; the tensors then differ from mergekit's in those entries
    exact_ties: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))

    @classmethod
    def from_mergekit(cls, data: Mapping, where: str = "<recipe>") -> ParamMerge:
        """Parse and validate a mergekit config dict; RecipeError naming the key and ``where``."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}: a merge recipe is a mapping, got {type(data).__name__}")
        for key in data:
            if key in _UNSUPPORTED and not (
                key == "tokenizer_source" and data[key] in (None, "base")
            ):
                raise RecipeError(f"{where}: key {key!r} is not supported: {_UNSUPPORTED[key]}")
            if key not in _KEYS and key not in _UNSUPPORTED:
                raise RecipeError(f"{where}: unknown key {key!r}; known: {', '.join(_KEYS)}")
        method = data.get("merge_method")
        if not isinstance(method, str):
            raise RecipeError(f"{where}: merge_method: a method name is required, got {method!r}")
        from merge_env.merging.methods.registry import get_operator

        try:
            op = get_operator(method)
        except MergeError as exc:
            raise RecipeError(f"{where}: merge_method: {exc}") from None
        base = data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise RecipeError(f"{where}: base_model: expected a path or name, got {base!r}")
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise RecipeError(f"{where}: models: a non-empty list of {{model, parameters}}")
        models = []
        for i, entry in enumerate(raw_models):
            at = f"{where}: models[{i}]"
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
                raise RecipeError(f"{at}: expected a mapping with a 'model' path, got {entry!r}")
            extra = set(entry) - {"model", "parameters"}
            if extra:
                raise RecipeError(f"{at}: unknown key(s) {sorted(extra)}; known: model, parameters")
            params = entry.get("parameters") or {}
            if not isinstance(params, Mapping):
                raise RecipeError(f"{at}: parameters: expected a mapping, got {params!r}")
            models.append(ModelRef(entry["model"], _plain(params)))
        names = [m.model for m in models]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise RecipeError(f"{where}: models: {dup!r} is listed twice")
        params = data.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{where}: parameters: expected a mapping, got {params!r}")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RecipeError(f"{where}: seed: expected an integer, got {seed!r}")
        exact = data.get("exact_ties", True)
        if not isinstance(exact, bool):
            raise RecipeError(f"{where}: exact_ties: expected true or false, got {exact!r}")
        dtype_of(data.get("dtype"), "dtype", where)
        dtype_of(data.get("out_dtype"), "out_dtype", where)
        spec = cls(
            method, base, tuple(models), _plain(params), data.get("dtype"),
            data.get("out_dtype"), seed, exact,
        )  # fmt: skip
        spec._validate_params(op, where)
        return spec

    def _validate_params(self, op: Operator, where: str) -> None:
        """Check every model's and the top-level parameters against the operator's declaration."""
        from merge_env.merging.methods.params import validate_params

        if op.needs_base and self.base_model is None:
            raise RecipeError(f"{where}: base_model: {op.name} needs a base model")
        per_model = []
        for i, (ref, is_base) in enumerate(self.inputs()):
            if op.needs_base and is_base:
                continue  # mergekit ignores the base's per-model parameters
            at = f"{where}: models[{i}] ({ref.model!r})"
            if i >= len(self.models):
                at = f"{where}: base_model {ref.model!r} ({op.name} merges it as an input, as mergekit)"
            validate_params(op, self.parameters, [ref.parameters], at)
            per_model.append(ref.parameters)
        validate_params(op, self.parameters, per_model, where)

    def inputs(self) -> list[tuple[ModelRef, bool]]:
        """(model, is_base) in mergekit's order: the models, then the base when not among them."""
        out = [(m, m.model == self.base_model) for m in self.models]
        if self.base_model is not None and self.base_model not in {m.model for m in self.models}:
            out.append((ModelRef(self.base_model), True))
        return out

    def to_mergekit(self) -> dict[str, Any]:
        """The recipe as a mergekit config dict (``from_mergekit`` inverts it)."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        models = []
        for m in self.models:
            entry: dict[str, Any] = {"model": m.model}
            if m.parameters:
                entry["parameters"] = _plain(m.parameters)
            models.append(entry)
        out["models"] = models
        if self.parameters:
            out["parameters"] = _plain(self.parameters)
        for key in ("dtype", "out_dtype"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.seed:
            out["seed"] = self.seed
        if not self.exact_ties:
            out["exact_ties"] = False
        return out

    def to_yaml(self) -> str:
        """The recipe as mergekit YAML text."""
        return yaml.safe_dump(self.to_mergekit(), sort_keys=False)

    @classmethod
    def load_yaml(cls, path: str | Path) -> ParamMerge:
        """Read a mergekit YAML file; RecipeError naming the file when it is unreadable or bad."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
        return cls.from_mergekit(data, where=str(path))
