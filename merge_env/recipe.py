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
import os
import shlex
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from merge_env.errors import RecipeError
from merge_env.ops import get_operator
from merge_env.param_merge import ModelRef, ParamMerge

MERGED = "merged"
BASE = "base"
SCALE_RANGE = (0.0, 4.0)
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

    def to_list(self) -> list:
        """[source, layer, scale]."""
        return [self.source, self.layer, _round(float(self.scale))]


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

    # -- export ------------------------------------------------------------------------------
    def to_mergekit(
        self,
        model_paths: Mapping[str, str],
        num_layers: int,
        residual_out: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """mergekit configs for this recipe: one (``mergekit-yaml``) or named stages
        (``mergekit-multi``); RecipeError where inexpressible.

        Stage ``merged`` is the parameter merge; the last, unnamed stage is a passthrough of
        one-layer slices that names ``merged`` as a model, as mergekit-multi resolves it.
        ``residual_out`` is the family's residual-branch output modules (``Family.residual_out``,
        e.g. ``attn.c_proj`` for GPT-2): slot scales become mergekit ``scale`` parameters filtered
        on them; a recipe with scales cannot be exported without them.
        """
        paths = dict(model_paths)
        merge_stage = None
        if self.merge is not None:
            merge_stage = _mergekit_merge(self.merge, paths)
            paths[MERGED] = MERGED  # mergekit-multi replaces a stage's name by its output folder
        if self.is_identity(num_layers):
            if self.shell_source == MERGED:
                return [merge_stage]
            return [_passthrough_identity(_path_of(self.shell_source, paths), num_layers)]
        path = self.resolved_path(num_layers)
        filters = _scale_filters(path, residual_out)
        shell = _path_of(self.shell_source, paths)
        # mergekit takes the embeddings from the first slice's model and the final norm and head
        # from the last's; a zero-layer slice of the shell makes them the shell's, as here
        slices = [] if path[0].source == self.shell_source else [_slice(shell, 0, 0)]
        for slot in path:
            scale = None
            if slot.scale != 1.0:
                scale = [{"filter": f, "value": float(slot.scale)} for f in filters]
                scale.append({"value": 1.0})
            slices.append(_slice(_path_of(slot.source, paths), slot.layer, slot.layer + 1, scale))
        if path[-1].source != self.shell_source:
            slices.append(_slice(shell, 0, 0))
        # base_model: the output's config.json is the shell's (else mergekit picks any model's)
        passthrough = {
            "merge_method": "passthrough",
            "base_model": shell,
            "slices": slices,
            "dtype": "float32",
        }
        uses_merge = MERGED in {s.source for s in path} | {self.shell_source}
        if merge_stage is None or not uses_merge:
            return [passthrough]
        return [{"name": MERGED, **merge_stage}, passthrough]

    def mergekit_export(
        self,
        model_paths: Mapping[str, str],
        num_layers: int,
        residual_out: Sequence[str] | None = None,
    ) -> MergekitExport:
        """The mergekit configs (``to_mergekit``) with what mergekit cannot reproduce."""
        stages = self.to_mergekit(model_paths, num_layers, residual_out)
        notes = []
        ran_merge = any(s["merge_method"] != "passthrough" for s in stages)
        merge = self.merge if ran_merge else None
        if merge is not None and get_operator(merge.merge_method).stochastic:
            notes.append(
                f"{merge.merge_method} drops entries at random: mergekit draws its own masks "
                f"(its --random-seed seeds one global stream; MergeGym seeds each tensor from "
                f"seed {merge.seed} and its name), so this gives another draw of the same "
                "merge, not MergeGym's tensors."
            )
        if merge is not None and not merge.exact_ties:
            notes.append(
                "MergeGym ran this merge with exact_ties: false (equal magnitudes at the density "
                "cut ranked by position); mergekit ranks them by its own sort, so those entries "
                "may differ."
            )
        return MergekitExport(stages=tuple(stages), notes=tuple(notes))


@dataclass(frozen=True)
class MergekitExport:
    """What mergekit runs for a recipe: one config, or named stages for ``mergekit-multi``."""

    stages: tuple[dict[str, Any], ...]
    notes: tuple[str, ...] = ()

    @property
    def tool(self) -> str:
        """The mergekit command that runs this file: mergekit-yaml or mergekit-multi."""
        return "mergekit-yaml" if len(self.stages) == 1 else "mergekit-multi"

    @property
    def suffix(self) -> str:
        """File-name ending that says which command reads the file."""
        return ".mergekit.yaml" if len(self.stages) == 1 else ".mergekit-multi.yaml"

    def command(self, config_file: str, out_dir: str) -> str:
        """The shell command that merges ``config_file`` into ``out_dir``."""
        cfg, out = shlex.quote(config_file), shlex.quote(out_dir)
        if len(self.stages) == 1:
            return f"mergekit-yaml {cfg} {out}"
        # "./": mergekit's model card takes a relative path with one "/" ("x.stages/merged") for a
        # Hub repo id and asks the Hub about it, which fails offline
        head, tail = os.path.split(out_dir)
        stages = shlex.quote(os.path.join(head or ".", f"{tail}.stages"))
        return f"mergekit-multi {cfg} --intermediate-dir {stages} --out-path {out}"

    def text(self, config_file: str, out_dir: str, header: Sequence[str] = ()) -> str:
        """The file's text: comments (header, the command, the notes), then the config(s)."""
        notes = []
        if len(self.stages) > 1:
            notes.append(
                f"stage {MERGED!r} is the parameter merge; the unnamed stage lays out the "
                f"inference path and names {MERGED!r} as a model."
            )
        slices = [s for stage in self.stages for s in stage.get("slices", ())]
        if any(
            s["sources"][0]["layer_range"][0] == s["sources"][0]["layer_range"][1] for s in slices
        ):
            notes.append(
                "A slice with layer_range [0, 0] adds no layer: as the first (last) slice it makes "
                "its model the source of the embeddings (final norm and head)."
            )
        if any("scale" in src.get("parameters", {}) for s in slices for src in s["sources"]):
            notes.append(
                "A slot's residual scale c multiplies its layer's residual-branch output "
                "projections (h <- h + c*attn(h), h <- h + c*mlp(h))."
            )
        notes += [f"NOTE: {n}" for n in self.notes]
        lines = [*header, f"run: {self.command(config_file, out_dir)}"]
        for note in notes:
            lines += textwrap.wrap(note, 96)
        comments = "".join(f"# {line}\n" for line in lines)
        if len(self.stages) == 1:
            return comments + yaml.safe_dump(self.stages[0], sort_keys=False)
        return comments + yaml.safe_dump_all(self.stages, sort_keys=False, explicit_start=True)


def _mergekit_merge(merge: ParamMerge, paths: Mapping[str, str]) -> dict[str, Any]:
    """The parameter merge as a mergekit config over checkpoint paths (MergeGym-only keys off)."""
    stage = merge.to_mergekit()
    stage.pop("seed", None)  # mergekit has no per-merge seed; see mergekit_export's notes
    stage.pop("exact_ties", None)
    stage["models"] = [{**m, "model": _path_of(m["model"], paths)} for m in stage["models"]]
    if stage.get("base_model") is not None:
        stage["base_model"] = _path_of(stage["base_model"], paths)
    return stage


def _scale_filters(path: Sequence[Slot], residual_out: Sequence[str] | None) -> list[str]:
    if all(s.scale == 1.0 for s in path):
        return []
    if not residual_out:
        raise RecipeError(
            "cannot export residual scales: pass the family's residual-branch modules "
            "(merge_env.arch.Family.residual_out)"
        )
    # mergekit matches a filter as a substring of the tensor name; the dots keep
    # "attn.c_proj" from matching inside another module's name
    return [f".{m}." for m in residual_out]


def _slice(
    model: str, start: int, stop: int, scale: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    source: dict[str, Any] = {"model": model, "layer_range": [start, stop]}
    if scale is not None:
        source["parameters"] = {"scale": scale}
    return {"sources": [source]}


def _passthrough_identity(model: str, num_layers: int) -> dict[str, Any]:
    return {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": model, "layer_range": [0, num_layers]}]}],
    }


def _path_of(name: str, paths: Mapping[str, str]) -> str:
    try:
        return str(paths[name])
    except KeyError:
        raise RecipeError(f"cannot export: no checkpoint path for source {name!r}") from None


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
    weights: Mapping[str, float],
    *,
    base: str | None = BASE,
    density: float | Mapping[str, float] | None = None,
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ParamMerge:
    """A ParamMerge over named pool models: per-model weight (and density), shared parameters."""
    models = []
    for name, w in weights.items():
        params: dict[str, Any] = {"weight": float(w)}
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
