"""Linear merging: the weighted average of model soups (Wortsman et al. 2022)."""

from __future__ import annotations

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
from merge_env.merging.sparsify import ParamDict, Params


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
    dtype = work_dtype(compute_dtype or torch.float32, promoted(tensors))
    weights = torch.tensor(
        [p["weight"] for p in model_params], dtype=dtype, device=tensors[0].device
    )
    out = tensors[0].to(dtype, copy=True).mul_(weights[0])
    for t, w in zip(tensors[1:], weights[1:]):
        out.addcmul_(t, w)
    if global_params["normalize"]:
        out.div_(weights.sum())  # no zero guard, as mergekit: a zero sum fails the finite check
    return out


OPERATORS = (
    Operator(
        name="linear",
        fn=linear,
        params=(Param("weight", required=True, per_model=True), Param("normalize", default=True)),
        needs_base=False,
        reference_url="https://arxiv.org/abs/2203.05482",
    ),
)
