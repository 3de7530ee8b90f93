"""Operator parameters as mergekit writes them: validated from a config, resolved per tensor."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from merge_env.errors import RecipeError
from merge_env.merging.methods.base import Operator
from merge_env.merging.sparsify import ParamDict


def _check_setting(value: Any, key: str, where: str) -> None:
    """Raise RecipeError unless ``value`` is a form ``resolve_value`` accepts."""
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, (bool, int, float, str)):
        _as_float(value, key, where)
        return
    if not isinstance(value, (list, tuple)) or not value:
        raise RecipeError(f"{where}: parameter {key!r} has an unsupported value {value!r}")
    if all(isinstance(v, Mapping) for v in value):
        for entry in value:
            if "value" not in entry or set(entry) - {"value", "filter"}:
                raise RecipeError(
                    f"{where}: parameter {key!r}: each filter entry needs exactly the keys "
                    f"'value' and optionally 'filter', got {sorted(entry)}"
                )
            _check_setting(entry["value"], key, where)
        return
    for v in value:
        if not isinstance(v, (bool, int, float, str)):
            raise RecipeError(f"{where}: parameter {key!r}: gradient entry {v!r} is not a number")
        _as_float(v, key, where)


def _as_float(value: Any, key: str, where: str) -> float:
    """A scalar setting as a float (bools become 0/1, numeric strings are parsed as YAML does)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{where}: parameter {key!r}: {value!r} is not a number") from None


def validate_params(
    op: Operator, global_params: Mapping, model_params: Sequence[Mapping], where: str
) -> None:
    """Check keys, required parameters, value forms and model count; RecipeError naming ``where``."""
    known = ", ".join(p.name for p in op.params)
    for key, value in global_params.items():
        if op.param(key) is None:
            raise RecipeError(f"{where}: unknown parameter {key!r} for {op.name} (known: {known})")
        _check_setting(value, key, where)
    for i, params in enumerate(model_params):
        for key, value in params.items():
            p = op.param(key)
            if p is None:
                raise RecipeError(
                    f"{where}: model {i}: unknown parameter {key!r} for {op.name} (known: {known})"
                )
            if not p.per_model:
                raise RecipeError(
                    f"{where}: model {i}: {key!r} is a global parameter of {op.name}; "
                    "set it once for the whole merge, not per model"
                )
            _check_setting(value, key, f"{where}: model {i}")
    for p in op.params:
        if not p.required or p.name in global_params:
            continue
        if not p.per_model:
            raise RecipeError(f"{where}: {op.name} needs the parameter {p.name!r}")
        for i, params in enumerate(model_params):
            if p.name not in params:
                raise RecipeError(f"{where}: model {i}: {op.name} needs the parameter {p.name!r}")
    n = len(model_params)
    if n < op.min_models or (op.max_models is not None and n > op.max_models):
        most = "" if op.max_models is None else f" and at most {op.max_models}"
        raise RecipeError(
            f"{where}: {op.name} takes at least {op.min_models}{most} non-base models, got {n}"
        )


def resolve_value(
    value: Any, tensor_name: str, layer: int | None, num_layers: int, part: str
) -> float:
    """A parameter setting resolved to a scalar for one tensor, as mergekit's evaluate_setting.

    A list of numbers is a gradient over relative depth t = layer / (num_layers - 1) (t = 1 for
    a one-layer model, t = 0 for tensors outside the decoder layers: mergekit plans embeddings,
    final norm and head with t = 0). A list of ``{filter, value}`` entries takes the first whose
    filter is absent, ``"*"``, a substring of ``tensor_name`` or equal to ``part``.
    """
    where = f"tensor {tensor_name!r}"
    if isinstance(value, Mapping):
        value = [value]
    if isinstance(value, (bool, int, float, str)):
        return _as_float(value, "value", where)
    if not isinstance(value, (list, tuple)) or not value:
        raise RecipeError(f"{where}: unsupported parameter value {value!r}")
    if all(isinstance(v, Mapping) for v in value):
        for entry in value:
            filt = entry.get("filter")
            if filt is None or filt == "*" or filt == part or (tensor_name and filt in tensor_name):
                return resolve_value(entry["value"], tensor_name, layer, num_layers, part)
        raise RecipeError(f"{where}: no filter entry matches and there is no default entry")
    if layer is None:
        t = 0.0
    else:
        t = layer / (num_layers - 1) if num_layers > 1 else 1.0
    if all(isinstance(v, bool) for v in value):  # discrete: mergekit picks, never blends
        return float(value[int(t * (len(value) - 1))])
    values = [_as_float(v, "gradient", where) for v in value]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return (1 - frac) * values[i0] + frac * values[i1]


def complete_params(
    op: Operator, global_params: ParamDict, model_params: Sequence[ParamDict], name: str
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Fill defaults; a per-model parameter given globally applies to every model (mergekit)."""
    glob: dict[str, float] = {}
    models: list[dict[str, float]] = [{} for _ in model_params]
    for p in op.params:
        if p.per_model:
            for i, params in enumerate(model_params):
                value = params.get(p.name, global_params.get(p.name, p.default))
                if value is None:
                    raise RecipeError(f"tensor {name!r}: model {i} lacks parameter {p.name!r}")
                models[i][p.name] = value
        else:
            value = global_params.get(p.name, p.default)
            if value is None:
                raise RecipeError(f"tensor {name!r}: {op.name} lacks parameter {p.name!r}")
            glob[p.name] = value
    return glob, models
