"""SLERP: spherical interpolation between the base and one other model (Shoemake 1985)."""

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
    dtype = work_dtype(compute_dtype or torch.float32, promoted([base, tensors[0]]))
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


OPERATORS = (
    Operator(
        name="slerp",
        fn=slerp,
        params=(Param("t", required=True),),
        needs_base=True,
        reference_url="https://en.wikipedia.org/wiki/Slerp",
        max_models=1,
    ),
)
