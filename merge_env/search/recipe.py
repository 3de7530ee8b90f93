"""Recipe = a parameter-level merge plus an inference path (HM3's two levels, DESIGN §1.1).

A recipe names its sources, never paths on disk, so its canonical JSON and hash are the same on
every machine: the hash is the evaluation cache's key. Sources are the pool's models by name
(``base`` and the fine-tunes) and ``merged``, the parameter-level merge of this recipe.

A slot takes layer ``layer`` of ``source`` and scales that layer's residual branches by ``scale``:
h <- h + c*attn(h), then h <- h + c*mlp(h). This is our stand-in for the paper's learned alignment
(DESIGN writes h + c*(layer(h) - h)); scaling each branch instead is equivalent to multiplying the
attention and MLP output projections by c, so any recipe materialises as an ordinary checkpoint
with the same logits. ``path=None`` means the identity path: every layer of ``merged`` (or of the
base, when there is no merge) in order, scale 1 -- exactly the parameter-level merge.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from merge_env.errors import ConfigError, RecipeError
from merge_env.merging.methods.params import resolve_value
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ModelRef, ParamMerge

MERGED = "merged"
BASE = "base"
SCALE_RANGE = (0.0, 4.0)
REST = "rest"  # per-part weights: the tensors no ``weight_parts`` filter names
_DIGITS = 6  # floats are rounded in the canonical form so equal recipes hash equal


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, _DIGITS) + 0.0  # +0.0 folds -0.0 into 0.0
    if isinstance(x, Mapping):
        return {str(k): _round(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_round(v) for v in x]
    return x


@dataclass(frozen=True)
class Slot:
    """One step of an inference path: layer ``layer`` of ``source``, residual branches scaled."""

    source: str
    layer: int
    scale: float = 1.0

    def __post_init__(self) -> None:
        # rounded as in the canonical form, so the layer scored is the layer a saved recipe
        # rebuilds, and slots equal in the canonical form are equal
        object.__setattr__(self, "scale", _round(float(self.scale)))

    def to_list(self) -> list:
        """[source, layer, scale] (the scale already rounded)."""
        return [self.source, self.layer, self.scale]


@dataclass(frozen=True)
class Recipe:
    """A merge candidate: parameter-level merge (or None) + inference path (or None = identity)."""

    merge: ParamMerge | None = None
    path: tuple[Slot, ...] | None = None
    shell: str | None = None  # source of embeddings, final norm, head; None = merged or base
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    # -- canonical form ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Canonical JSON-able form (the hash is computed from this)."""
        data: dict[str, Any] = {
            "merge": None if self.merge is None else _round(self.merge.to_mergekit()),
            "path": None if self.path is None else [s.to_list() for s in self.path],
        }
        if self.shell is not None:
            data["shell"] = self.shell
        return data

    @classmethod
    def single(cls, source: str) -> Recipe:
        """The recipe that is exactly one pool model."""
        return cls(shell=source)

    def canonical_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace, rounded floats."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @property
    def hash(self) -> str:
        """Stable 16-hex-digit hash of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<recipe>") -> Recipe:
        """Parse the canonical (or hand-written) dict form; RecipeError naming the key."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}: a recipe is a mapping with keys 'merge' and 'path'")
        unknown = set(data) - {"merge", "path", "shell", "meta"}
        if unknown:
            raise RecipeError(f"{where}: unknown recipe key(s) {sorted(unknown)}")
        merge = data.get("merge")
        pm = None if merge is None else ParamMerge.from_mergekit(merge, where=f"{where}: merge")
        raw_path = data.get("path")
        path = None
        if raw_path is not None:
            if not isinstance(raw_path, Sequence) or isinstance(raw_path, str):
                raise RecipeError(f"{where}: 'path' must be a list of [source, layer, scale]")
            path = tuple(_parse_slot(s, f"{where}: path[{i}]") for i, s in enumerate(raw_path))
        shell = data.get("shell")
        if shell is not None and not isinstance(shell, str):
            raise RecipeError(f"{where}: 'shell' must be a source name, got {shell!r}")
        return cls(merge=pm, path=path, shell=shell, meta=dict(data.get("meta") or {}))

    def to_yaml(self) -> str:
        """YAML text of the canonical form (round-trips through from_yaml)."""
        data = self.to_dict()
        if data["path"] is not None:
            data["path"] = [{"source": s, "layer": l_, "scale": c} for s, l_, c in data["path"]]
        return yaml.safe_dump(data, sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str, where: str = "<yaml>") -> Recipe:
        """Parse YAML text written by to_yaml (or by hand)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"{where}: invalid YAML ({exc})") from exc
        return cls.from_dict(data, where)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """Read a recipe YAML/JSON file."""
        p = Path(path)
        try:
            return cls.from_yaml(p.read_text(), where=str(p))
        except OSError as exc:
            raise RecipeError(f"{p}: cannot read ({exc})") from exc

    # -- meaning -----------------------------------------------------------------------------
    def resolved_path(self, num_layers: int) -> tuple[Slot, ...]:
        """The explicit path (the identity path over the merge, or the base, when path is None)."""
        if self.path is not None:
            return self.path
        return tuple(Slot(self.shell_source, layer) for layer in range(num_layers))

    @property
    def shell_source(self) -> str:
        """Source of the embeddings, final norm and head: ``shell``, else the merge, else base."""
        if self.shell is not None:
            return self.shell
        return MERGED if self.merge is not None else BASE

    def is_identity(self, num_layers: int) -> bool:
        """Whether the path is the plain layer-by-layer stack of the shell source."""
        ident = tuple(Slot(self.shell_source, layer) for layer in range(num_layers))
        return self.path is None or tuple(self.path) == ident

    def validate(self, sources: Sequence[str], num_layers: int, where: str = "<recipe>") -> None:
        """Check sources, layer indices and scales against a pool; RecipeError when wrong."""
        known = set(sources) | ({MERGED} if self.merge is not None else set())
        if self.merge is not None:
            names = [m.model for m in self.merge.models]
            if self.merge.base_model is not None:
                names.append(self.merge.base_model)
            for name in names:
                if name not in sources:
                    raise RecipeError(
                        f"{where}: merge names unknown model {name!r}; known: {sorted(sources)}"
                    )
        if self.shell_source not in known:
            raise RecipeError(
                f"{where}: shell names unknown source {self.shell_source!r}; known: {sorted(known)}"
            )
        path = self.resolved_path(num_layers)
        if not path:
            raise RecipeError(f"{where}: the inference path is empty")
        for i, slot in enumerate(path):
            if slot.source not in known:
                hint = " (the recipe has no merge)" if slot.source == MERGED else ""
                raise RecipeError(
                    f"{where}: path[{i}] names unknown source {slot.source!r}{hint}; "
                    f"known: {sorted(known)}"
                )
            if not 0 <= slot.layer < num_layers:
                raise RecipeError(
                    f"{where}: path[{i}] layer {slot.layer} out of range 0..{num_layers - 1}"
                )


def _parse_slot(raw: Any, where: str) -> Slot:
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"source", "layer", "scale"}
        if unknown:
            raise RecipeError(f"{where}: unknown slot key(s) {sorted(unknown)}")
        raw = [raw.get("source"), raw.get("layer"), raw.get("scale", 1.0)]
    if not isinstance(raw, Sequence) or isinstance(raw, str) or len(raw) not in (2, 3):
        raise RecipeError(f"{where}: a slot is [source, layer, scale], got {raw!r}")
    source, layer, *rest = raw
    scale = rest[0] if rest else 1.0
    if not isinstance(source, str) or not source:
        raise RecipeError(f"{where}: slot source must be a model name, got {source!r}")
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise RecipeError(f"{where}: slot layer must be an integer, got {layer!r}")
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
        raise RecipeError(f"{where}: slot scale must be a finite number, got {scale!r}")
    lo, hi = SCALE_RANGE
    if not lo <= scale <= hi:
        raise RecipeError(f"{where}: slot scale {scale} outside [{lo}, {hi}]")
    return Slot(source, layer, float(scale))


def param_merge(
    method: str,
    weights: Mapping[str, float | Sequence[Mapping[str, Any]]],
    *,
    base: str | None = BASE,
    density: float | Mapping[str, float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ParamMerge:
    """A ParamMerge over named pool models: per-model weight (and density), shared parameters.
    A weight is a number or mergekit's list of ``{filter, value}`` entries (per-part weights)."""
    models = []
    for name, w in weights.items():
        per_part = isinstance(w, Sequence) and not isinstance(w, str)
        value = [dict(e) for e in w] if per_part else float(w)
        params: dict[str, Any] = {"weight": value}
        d = density.get(name) if isinstance(density, Mapping) else density
        if d is not None:
            params["density"] = float(d)
        models.append(ModelRef(model=name, parameters=params))
    return ParamMerge(
        merge_method=method,
        base_model=base,
        models=tuple(models),
        parameters=dict(parameters or {}),
        seed=seed,
    )


def weighted_merge(
    method: str,
    weights: Mapping[str, float | Sequence[Mapping[str, Any]]],
    *,
    density: float | Mapping[str, float] | None = None,
) -> ParamMerge:
    """A ParamMerge of ``method`` with these per-model weights, over the base where the operator
    needs one and with ``density`` where it takes one (linear takes none)."""
    op = get_operator(method)
    base = BASE if op.needs_base else None
    return param_merge(method, weights, base=base,
                       density=density if op.param("density") is not None else None)  # fmt: skip


def part_weighted_merge(
    method: str,
    experts: Sequence[str],
    weights: np.ndarray,
    parts: Sequence[str],
    *,
    density: float | Mapping[str, float] | None = None,
) -> ParamMerge:
    """The merge of ``method`` whose expert ``i`` has weight ``weights[p, i]`` on part ``p``'s
    tensors (``weights``: one row per part of ``parts``, then one for the rest). Each expert's
    weight is mergekit's filter list, the first entry whose filter a tensor matches deciding
    (the last, filterless entry takes the rest). Rows that all agree give the plain per-expert
    merge (numbers, not lists), so the plain merges keep their hash inside a per-part space."""
    w = np.asarray(weights, float)
    if w.shape != (len(parts) + 1, len(experts)):
        raise ConfigError(f"per-part weights: expected {len(parts) + 1} rows (parts {list(parts)}"
                          f" and the rest) x {len(experts)} experts, got shape {w.shape}")  # fmt: skip
    plain: dict[str, Any] = {e: float(v) for e, v in zip(experts, w[-1])}
    if not parts or np.allclose(w, w[-1], rtol=0.0, atol=1e-12):
        return weighted_merge(method, plain, density=density)
    listed = {e: [*({"filter": part, "value": float(w[p, i])} for p, part in enumerate(parts)),
                  {"value": float(w[-1, i])}]
              for i, e in enumerate(experts)}  # fmt: skip
    return weighted_merge(method, listed, density=density)


def read_part_weights(
    merge: ParamMerge, experts: Sequence[str], parts: Sequence[str]
) -> np.ndarray | None:
    """``part_weighted_merge``'s inverse: the weights of ``merge`` (a number, or a filter list as
    ``part_weighted_merge`` writes it; a missing weight reads as 0) as an array (parts + 1,
    experts), the rest last; None when its models are not ``experts``, a weight is neither, or a
    filter list other than ``parts`` in their order followed by the rest."""
    by_model = {m.model: m.parameters for m in merge.models}
    if set(by_model) != set(experts):
        return None
    values = [by_model[e].get("weight", 0.0) for e in experts]
    rows = len(parts) + 1
    out = np.empty((rows, len(values)))
    for i, value in enumerate(values):
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[:, i] = float(value)
            continue
        if not parts or isinstance(value, str) or not isinstance(value, Sequence):
            return None
        if len(value) != rows:
            return None
        filters = [e.get("filter") if isinstance(e, Mapping) else "?" for e in value]
        if filters != [*parts, None]:
            return None
        try:
            out[:, i] = [float(e["value"]) for e in value]
        except (KeyError, TypeError, ValueError):
            return None
    return out


def uniform_merge(
    method: str, experts: Sequence[str], *, density: float | None = None
) -> ParamMerge:
    """The merge of ``method`` with equal weights 1/K on the K experts."""
    return weighted_merge(method, {e: 1.0 / len(experts) for e in experts}, density=density)


def check_weight_parts(parts: Any, key: str) -> tuple[str, ...]:
    """``weight_parts`` as a tuple of distinct, non-empty tensor-name filters; ConfigError naming
    ``key`` otherwise."""
    if parts is None:
        return ()
    if isinstance(parts, str) or not isinstance(parts, Sequence):
        raise ConfigError(f"{key}: a list of tensor-name filters (e.g. [self_attn, mlp]), "
                          f"got {parts!r}")  # fmt: skip
    out = tuple(parts)
    for part in out:
        if not isinstance(part, str) or not part.strip() or part in ("*", REST):
            raise ConfigError(f"{key}: each part is a non-empty tensor-name filter other than "
                              f"'*' and {REST!r}, got {part!r}")  # fmt: skip
    if len(set(out)) != len(out):
        raise ConfigError(f"{key}: a part is listed twice in {list(out)}")
    return out


def check_parts_cover(parts: Sequence[str], checkpoint: Any) -> None:
    """ConfigError naming a part that takes no tensor of ``checkpoint`` (a Checkpoint): its
    weight genes would change nothing. Each tensor goes to the part the merge engine resolves
    for it (``resolve_value``: the first filter equal to the tensor's arch part or contained in
    its name), so a part means here what it means in the merge."""
    arch, names = checkpoint.arch, checkpoint.names

    def first(entries: list[dict[str, Any]], name: str) -> float:
        return resolve_value(entries, name, arch.layer_of(name), arch.num_layers,
                             arch.part_of(name))  # fmt: skip

    listed = [*({"filter": p, "value": float(i)} for i, p in enumerate(parts)), {"value": -1.0}]
    taken = {int(first(listed, n)) for n in names}
    for i, part in enumerate(parts):
        if i not in taken:
            alone = [{"filter": part, "value": 1.0}, {"value": 0.0}]
            why = ("every tensor it names is taken by an earlier part"
                   if any(first(alone, n) for n in names)
                   else "no tensor name contains it and no tensor is of that part")  # fmt: skip
            raise ConfigError(
                f"weight_parts: part {part!r} takes no tensor of the pool ({why}); its weight "
                f"genes would change nothing. Tensor names look like {list(names[:3])}"
            )


def check_pool_parts(parts: Sequence[str], pool: Any) -> None:
    """``check_parts_cover`` against the first checkpoint of ``pool`` (a MergeProblem's pool),
    when there are parts and the pool has checkpoints."""
    checkpoints = getattr(pool, "checkpoints", None)
    if parts and checkpoints:
        check_parts_cover(parts, next(iter(checkpoints.values())))
