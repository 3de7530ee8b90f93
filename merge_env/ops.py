"""Merge operators as pure tensor functions, with mergekit 0.1.5's parameter names and numerics.

Each operator takes the base tensor, the other models' tensors, one resolved parameter dict per
model and the global parameters, and returns the merged tensor. Parameter forms (gradients over
depth, filters) are resolved to scalars per tensor by ``resolve_value`` before an operator runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from merge_env.errors import MergeError, RecipeError
from merge_env.sparsify import (
    ParamDict,
    Params,
    Sparsifier,
    SparsifyContext,
    drop_random,
    sparsify_each,
    trim_magnitude,
    trim_outliers,
)

log = logging.getLogger(__name__)

Tensors = Sequence[Tensor]
Gen = torch.Generator | None
DType = torch.dtype | None


@dataclass(frozen=True)
class Param:
    """A declared operator parameter, validated before any tensor is read."""

    name: str
    default: Any = None
    required: bool = False
    per_model: bool = False


@dataclass(frozen=True)
class Operator:
    """A registered merge method: its pure tensor function and its declared parameters.

    ``fn(base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)``
    takes defaults-filled scalar parameters; ``merge_tensors`` is the checked way to call it.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    params: tuple[Param, ...]
    needs_base: bool
    reference_url: str
    stochastic: bool = False  # draws from the generator (DARE)
    min_models: int = 1  # non-base models
    max_models: int | None = None

    def param(self, name: str) -> Param | None:
        """The declared parameter called ``name``, or None."""
        return next((p for p in self.params if p.name == name), None)


OPERATORS: dict[str, Operator] = {}


def register(op: Operator) -> Operator:
    """Add ``op`` to the registry; a duplicate name is a programming error."""
    if op.name in OPERATORS:
        raise MergeError(f"merge operator {op.name!r} is already registered")
    OPERATORS[op.name] = op
    return op


def get_operator(name: str) -> Operator:
    """The registered operator ``name``; MergeError listing the known ones otherwise."""
    try:
        return OPERATORS[name]
    except KeyError:
        raise MergeError(
            f"unknown merge method {name!r}; known: {', '.join(sorted(OPERATORS))}"
        ) from None


# ---------------------------------------------------------------- parameter forms and validation


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


def _complete(
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


# ---------------------------------------------------------------- operators


def _promoted(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The promoted dtype of the inputs (mergekit aligns a group to it)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _work_dtype(requested: torch.dtype | None, inputs: torch.dtype) -> torch.dtype:
    """The computation dtype: ``requested`` (never below the inputs' precision), else the inputs'."""
    return inputs if requested is None else torch.promote_types(requested, inputs)


def linear(
    base: Tensor | None,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = torch.float32,
    exact_ties: bool = True,
) -> Tensor:
    """Σ w_i θ_i, divided by Σ w_i when ``normalize`` (model soups, Wortsman et al. 2022)."""
    dtype = _work_dtype(compute_dtype or torch.float32, _promoted(tensors))
    weights = torch.tensor(
        [p["weight"] for p in model_params], dtype=dtype, device=tensors[0].device
    )
    out = tensors[0].to(dtype, copy=True).mul_(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out.addcmul_(t, w)
    if global_params["normalize"]:
        out.div_(weights.sum())  # no zero guard, as mergekit: a zero sum fails the finite check
    return out


def slerp(
    base: Tensor | None,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = torch.float32,
    exact_ties: bool = True,
) -> Tensor:
    """Spherical interpolation from base (t=0) to the one other model (t=1) (Shoemake 1985).

    As mergekit: the whole tensor is one vector; when |cos θ| > 0.9995 it falls back to lerp.
    """
    assert base is not None  # guaranteed by merge_tensors (needs_base)
    dtype = _work_dtype(compute_dtype or torch.float32, _promoted([base, tensors[0]]))
    a = base.reshape(1, -1).to(dtype)
    b = tensors[0].reshape(1, -1).to(dtype)
    t = torch.tensor(float(global_params["t"]), dtype=dtype, device=a.device)
    if a.numel() == 0:
        return a.clone().reshape(base.shape)
    dot = _cosine(a, b)
    if dot.abs() > 0.9995:
        coef_a, coef_b = 1 - t, t
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        coef_a, coef_b = torch.sin((1 - t) * theta) / sin_theta, torch.sin(t * theta) / sin_theta
    return torch.mul(a, coef_a).addcmul_(b, coef_b).reshape(base.shape)


def _cosine(a: Tensor, b: Tensor, chunk: int = 1 << 20) -> Tensor:
    """cos θ of two [1, n] rows, summed chunk by chunk exactly as mergekit 0.1.5's slerp.

    For small angles θ = acos(cos θ) amplifies rounding (dθ = -d cos θ / sin θ), so a dot
    product summed in another order moves the result by more than 1e-5.
    """
    starts = range(0, a.shape[1], chunk)
    vector_norm = torch.linalg.vector_norm

    def norm(x: Tensor) -> Tensor:
        """The norm of the chunks' norms (mergekit's order of summation)."""
        parts = [vector_norm(x[:, i : i + chunk], dim=1, keepdim=True) for i in starts]
        return vector_norm(torch.stack(parts), dim=0)

    norm_a, norm_b = norm(a), norm(b)
    norm_a = torch.where(norm_a > 1e-8, norm_a, 1)
    norm_b = torch.where(norm_b > 1e-8, norm_b, 1)
    parts = [
        ((a[:, i : i + chunk] / norm_a) * (b[:, i : i + chunk] / norm_b)).sum(dim=1, keepdim=True)
        for i in starts
    ]
    return torch.stack(parts).sum(dim=0).clamp(-1, 1).view(())


def _task_arithmetic(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen,
    compute_dtype: DType,
    exact_ties: bool,
    *,
    sparsify: Sparsifier | None,
    elect_sign: bool,
) -> Tensor:
    """θ_base + λ·mix(sparsify(w_i·δ_i)), mergekit's generalized task arithmetic, step for step.

    Task vectors δ_i = θ_i − θ_base (Ilharco et al. 2023). With ``elect_sign`` (TIES, Yadav et
    al. 2023 §3 steps 2-3) each entry keeps only the weighted deltas agreeing with the sign of
    their sum, and ``normalize`` divides by the sum of the agreeing weights (a disjoint mean).
    """
    dtype = _work_dtype(compute_dtype, _promoted([base, *tensors]))
    base_w = base.to(dtype)
    if not tensors:
        return base_w.clone()
    ctx = SparsifyContext(bool(global_params["rescale"]), generator, exact_ties)
    deltas = torch.empty((len(tensors), *base.shape), dtype=dtype, device=base.device)
    for i, t in enumerate(tensors):
        torch.sub(t, base_w, out=deltas[i])
    if sparsify is not None:
        sparsify_each(sparsify, deltas, model_params, ctx)
    weights = torch.tensor([p["weight"] for p in model_params], dtype=dtype, device=base.device)
    weights = weights.view(-1, *([1] * base.dim()))
    deltas.mul_(weights)
    if elect_sign:
        positive = deltas.sum(dim=0) >= 0  # a zero total elects +, as mergekit
        agree = torch.where(positive, deltas > 0, deltas < 0)  # zero deltas never count
        deltas.mul_(agree)  # multiply, not select: a NaN must survive to the finite check
        mixed = deltas.sum(dim=0)
        divisor = (weights * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        mixed = deltas.sum(dim=0)
        divisor = weights.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    del deltas
    if global_params["normalize"]:
        mixed /= divisor
    if global_params["lambda"] != 1:
        mixed *= global_params["lambda"]
    return mixed.add_(base_w)


def task_arithmetic(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """Task arithmetic (Ilharco et al. 2023): θ_base + λ Σ w_i δ_i."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=None, elect_sign=False)


def ties(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """TIES-Merging (Yadav et al. 2023): trim by magnitude, elect sign, disjoint mean."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=trim_magnitude, elect_sign=True)


def dare_linear(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """DARE (Yu et al. 2023): random drop and rescale, then task arithmetic."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=drop_random, elect_sign=False)


def dare_ties(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """DARE drop and rescale (Yu et al. 2023), then TIES sign election and mean."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=drop_random, elect_sign=True)


def breadcrumbs(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """Model Breadcrumbs (Davari & Belilovsky 2023): drop outliers and small deltas, sum."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=trim_outliers, elect_sign=False)


def breadcrumbs_ties(
    base: Tensor,
    tensors: Tensors,
    model_params: Params,
    global_params: ParamDict,
    generator: Gen = None,
    compute_dtype: DType = None,
    exact_ties: bool = True,
) -> Tensor:
    """Model Breadcrumbs masks, then TIES sign election (mergekit's breadcrumbs_ties)."""
    args = (base, tensors, model_params, global_params, generator, compute_dtype, exact_ties)
    return _task_arithmetic(*args, sparsify=trim_outliers, elect_sign=True)


# ---------------------------------------------------------------- the engine's entry point


def merge_tensors(
    op_name: str,
    tensors: Sequence[torch.Tensor],
    base: Tensor | None,
    model_params: Sequence[Mapping[str, float]],
    global_params: Mapping[str, float],
    *,
    generator: torch.Generator | None = None,
    name: str = "<tensor>",
    compute_dtype: torch.dtype | None = torch.float32,
    exact_ties: bool = True,
) -> torch.Tensor:
    """The merged tensor, in the inputs' (promoted) dtype.

    ``compute_dtype=None`` computes as mergekit does without a ``dtype:`` setting: the task
    arithmetic family in the inputs' dtype, linear and slerp in float32. ``exact_ties=False``
    ranks equal magnitudes at a density cut by position instead of reproducing mergekit's
    unstable sort (which then costs a full sort). ``base`` is ignored by operators that do not
    need one (linear: put the base among ``tensors`` to include it).
    """
    op = get_operator(op_name)
    if len(model_params) != len(tensors):
        raise MergeError(
            f"tensor {name!r}: {len(tensors)} tensors but {len(model_params)} parameter sets"
        )
    n = len(tensors)
    if n < op.min_models or (op.max_models is not None and n > op.max_models):
        raise MergeError(f"tensor {name!r}: {op.name} cannot merge {n} non-base models")
    if op.needs_base and base is None:
        raise MergeError(f"tensor {name!r}: {op.name} needs a base model tensor")
    if op.stochastic and generator is None:
        raise MergeError(f"tensor {name!r}: {op.name} is random and needs a torch.Generator")
    inputs = ([base] if op.needs_base else []) + list(tensors)
    ref, ref_label = inputs[0], "base" if op.needs_base else "model 0"
    for i, t in enumerate(tensors):
        if t.shape != ref.shape:
            raise MergeError(
                f"tensor {name!r}: model {i} has shape {tuple(t.shape)} but {ref_label} has "
                f"{tuple(ref.shape)}"
            )
        if t.device != ref.device:
            raise MergeError(
                f"tensor {name!r}: model {i} is on {t.device}, {ref_label} on {ref.device}"
            )
    if not all(t.is_floating_point() for t in inputs):
        raise MergeError(f"tensor {name!r}: only floating-point tensors can be merged")
    glob, models = _complete(op, global_params, model_params, name)
    out = op.fn(base, tensors, models, glob, generator, compute_dtype, exact_ties)
    out = out.to(_promoted(inputs))
    if not torch.isfinite(out.sum()):  # one cheap reduction; the exact count only when it fails
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise MergeError(
                f"tensor {name!r}: {op.name} produced {bad} non-finite values (NaN/inf); "
                "check the inputs for NaN and that the weights do not sum to zero"
            )
    return out


_GTA_URLS = {
    "task_arithmetic": "https://arxiv.org/abs/2212.04089",
    "ties": "https://arxiv.org/abs/2306.01708",
    "dare_linear": "https://arxiv.org/abs/2311.03099",
    "dare_ties": "https://arxiv.org/abs/2311.03099",
    "breadcrumbs": "https://arxiv.org/abs/2312.06795",
    "breadcrumbs_ties": "https://arxiv.org/abs/2312.06795",
}


def _gta_params(normalize: bool, rescale: bool, gamma: bool = False) -> tuple[Param, ...]:
    """mergekit's generalized task arithmetic parameters with this method's defaults."""
    params = (
        Param("int8_mask", default=False),  # a memory option in mergekit; no numeric effect
        Param("normalize", default=normalize),
        Param("rescale", default=rescale),
        Param("lambda", default=1.0),
        Param("weight", required=True, per_model=True),
        Param("density", default=1.0, per_model=True),
    )
    return params + ((Param("gamma", default=0.01, per_model=True),) if gamma else ())


def _register_gta(
    fn: Callable[..., torch.Tensor], normalize: bool, rescale: bool, **kw: Any
) -> None:
    """Register one member of the task-arithmetic family."""
    name = fn.__name__
    register(
        Operator(
            name=name,
            fn=fn,
            params=_gta_params(normalize, rescale, gamma=name.startswith("breadcrumbs")),
            needs_base=True,
            reference_url=_GTA_URLS[name],
            **kw,
        )
    )


register(
    Operator(
        name="linear",
        fn=linear,
        params=(Param("weight", required=True, per_model=True), Param("normalize", default=True)),
        needs_base=False,
        reference_url="https://arxiv.org/abs/2203.05482",
    )
)
register(
    Operator(
        name="slerp",
        fn=slerp,
        params=(Param("t", required=True),),
        needs_base=True,
        reference_url="https://en.wikipedia.org/wiki/Slerp",
        max_models=1,
    )
)
_register_gta(task_arithmetic, normalize=False, rescale=False)
_register_gta(ties, normalize=True, rescale=False)
_register_gta(dare_linear, normalize=False, rescale=True, stochastic=True)
_register_gta(dare_ties, normalize=False, rescale=True, stochastic=True)
_register_gta(breadcrumbs, normalize=False, rescale=False)
_register_gta(breadcrumbs_ties, normalize=False, rescale=False)
