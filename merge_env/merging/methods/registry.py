"""The merge-method registry: name -> Operator, and the checked call the engine makes.

The registry lists the operator families explicitly (no import-for-side-effect registration):
adding an operator is one function in its family module, one Operator in that module's
``OPERATORS``, and a test.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from merge_env.errors import MergeError
from merge_env.merging.methods import linear, slerp, task_arithmetic
from merge_env.merging.methods.base import Operator, promoted
from merge_env.merging.methods.params import complete_params

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
    glob, models = complete_params(op, global_params, model_params, name)
    out = op.fn(base, tensors, models, glob, generator, compute_dtype, exact_ties)
    out = out.to(promoted(inputs))
    if not torch.isfinite(out.sum()):  # one cheap reduction; the exact count only when it fails
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise MergeError(
                f"tensor {name!r}: {op.name} produced {bad} non-finite values (NaN/inf); "
                "check the inputs for NaN and that the weights do not sum to zero"
            )
    return out


for _op in (*linear.OPERATORS, *slerp.OPERATORS, *task_arithmetic.OPERATORS):
    register(_op)
