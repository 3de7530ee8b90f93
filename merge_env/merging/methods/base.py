"""What every merge operator is made of: declared parameters, the Operator record, dtype rules.

Operators are pure tensor functions with mergekit 0.1.5's parameter names and numerics. Each takes
the base tensor, the other models' tensors, one resolved parameter dict per model and the global
parameters, and returns the merged tensor. Parameter forms (gradients over depth, filters) are
resolved to scalars per tensor by ``params.resolve_value`` before an operator runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

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


def promoted(tensors: Sequence[torch.Tensor]) -> torch.dtype:
    """The promoted dtype of the inputs (mergekit aligns a group to it)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def work_dtype(requested: torch.dtype | None, inputs: torch.dtype) -> torch.dtype:
    """The computation dtype: ``requested`` (never below the inputs' precision), else the inputs'."""
    return inputs if requested is None else torch.promote_types(requested, inputs)
