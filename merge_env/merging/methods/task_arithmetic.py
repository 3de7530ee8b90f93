"""The task-arithmetic family (mergekit's generalized task arithmetic): task arithmetic, TIES,
DARE, Model Breadcrumbs and their sign-electing variants, step for step as mergekit 0.1.5."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from merge_env.merging.methods.base import (
    DType,
    Gen,
    Operator,
    Param,
    Tensors,
    promoted,
    work_dtype,
)
from merge_env.merging.sparsify import (
    ParamDict,
    Params,
    Sparsifier,
    SparsifyContext,
    drop_random,
    sparsify_each,
    trim_magnitude,
    trim_outliers,
)

# entries per chunk of the sign election and mean: their temporaries are k chunks of this
CHUNK = 1 << 18


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
    chunk: int = CHUNK,
) -> Tensor:
    """θ_base + λ·mix(sparsify(w_i·δ_i)), mergekit's generalized task arithmetic, step for step.

    Task vectors δ_i = θ_i − θ_base (Ilharco et al. 2023). With ``elect_sign`` (TIES, Yadav et
    al. 2023 §3 steps 2-3) each entry keeps only the weighted deltas agreeing with the sign of
    their sum, and ``normalize`` divides by the sum of the agreeing weights (a disjoint mean).
    The k deltas are the one full-size working set; the election and the mean run over
    ``chunk`` entries at a time (``_mix``).
    """
    dtype = work_dtype(compute_dtype, promoted([base, *tensors]))
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
    deltas.mul_(weights.view(-1, *([1] * base.dim())))
    out = torch.empty_like(base_w, memory_format=torch.contiguous_format)
    rows, flat_base, flat_out = deltas.view(len(tensors), -1), base_w.reshape(-1), out.view(-1)
    for start in range(0, base.numel(), chunk):
        stop = start + chunk
        _mix(rows[:, start:stop], weights, global_params, elect_sign, flat_base[start:stop],
             flat_out[start:stop])  # fmt: skip
    return out


def _mix(
    deltas: Tensor, weights: Tensor, global_params: ParamDict, elect_sign: bool, base: Tensor,
    out: Tensor,
) -> None:  # fmt: skip
    """``out`` = base + λ·mix(weighted ``deltas``) over one chunk of entries (k × c, in place).

    Every step is entry-wise over the k models, so a chunk gives bit for bit what the whole
    tensor gives, and the sign election's temporaries (sums, masks, agreeing weights) are k
    chunks, not k tensors.
    """
    w = weights.view(-1, 1)
    if elect_sign:
        # the elected sign as ±1 (a zero total elects +, as mergekit); a delta agrees where its
        # product with it is > 0: exactly (d > 0 if + else d < 0), zero deltas never counting,
        # in two vectorised passes over k × c instead of three and a select
        elected = torch.where(deltas.sum(dim=0) >= 0, 1.0, -1.0).to(deltas.dtype)
        agree = torch.mul(deltas, elected) > 0
        deltas.mul_(agree)  # multiply, not select: a NaN must survive to the finite check
        torch.sum(deltas, dim=0, out=out)
        divisor = (w * agree).sum(dim=0)
        divisor[divisor == 0] = 1
    else:
        torch.sum(deltas, dim=0, out=out)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if global_params["normalize"]:
        out /= divisor
    if global_params["lambda"] != 1:
        out *= global_params["lambda"]
    out.add_(base)


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


def _gta(fn: Callable[..., torch.Tensor], normalize: bool, rescale: bool, **kw: Any) -> Operator:
    """One member of the task-arithmetic family as an Operator."""
    name = fn.__name__
    return Operator(
        name=name,
        fn=fn,
        params=_gta_params(normalize, rescale, gamma=name.startswith("breadcrumbs")),
        needs_base=True,
        reference_url=_GTA_URLS[name],
        **kw,
    )


OPERATORS = (
    _gta(task_arithmetic, normalize=False, rescale=False),
    _gta(ties, normalize=True, rescale=False),
    _gta(dare_linear, normalize=False, rescale=True, stochastic=True),
    _gta(dare_ties, normalize=False, rescale=True, stochastic=True),
    _gta(breadcrumbs, normalize=False, rescale=False),
    _gta(breadcrumbs_ties, normalize=False, rescale=False),
)
