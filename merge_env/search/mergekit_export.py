"""A recipe as mergekit configs: one ``mergekit-yaml`` file, or named ``mergekit-multi`` stages.

The parameter merge becomes stage ``merged``; the inference path becomes a passthrough of
one-layer slices, slot scales mergekit ``scale`` parameters filtered on the family's
residual-branch output projections. What mergekit cannot reproduce is said in notes.
"""

from __future__ import annotations

import os
import shlex
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from merge_env.errors import RecipeError
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ParamMerge
from merge_env.search.recipe import MERGED, Recipe, Slot


def to_mergekit(
    recipe: Recipe,
    model_paths: Mapping[str, str],
    num_layers: int,
    residual_out: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """mergekit configs for a recipe: one (``mergekit-yaml``) or named stages
    (``mergekit-multi``); RecipeError where inexpressible.

    Stage ``merged`` is the parameter merge; the last, unnamed stage is a passthrough of
    one-layer slices that names ``merged`` as a model, as mergekit-multi resolves it.
    ``residual_out`` is the family's residual-branch output modules (``Family.residual_out``,
    e.g. ``attn.c_proj`` for GPT-2): slot scales become mergekit ``scale`` parameters filtered
    on them; a recipe with scales cannot be exported without them.
    """
    paths = dict(model_paths)
    merge_stage = None
    if recipe.merge is not None:
        merge_stage = _mergekit_merge(recipe.merge, paths)
        paths[MERGED] = MERGED  # mergekit-multi replaces a stage's name by its output folder
    if recipe.is_identity(num_layers):
        if recipe.shell_source == MERGED:
            return [merge_stage]
        return [_passthrough_identity(_path_of(recipe.shell_source, paths), num_layers)]
    path = recipe.resolved_path(num_layers)
    filters = _scale_filters(path, residual_out)
    shell = _path_of(recipe.shell_source, paths)
    # mergekit takes the embeddings from the first slice's model and the final norm and head
    # from the last's; a zero-layer slice of the shell makes them the shell's, as here
    slices = [] if path[0].source == recipe.shell_source else [_slice(shell, 0, 0)]
    for slot in path:
        scale = None
        if slot.scale != 1.0:
            scale = [{"filter": f, "value": float(slot.scale)} for f in filters]
            scale.append({"value": 1.0})
        slices.append(_slice(_path_of(slot.source, paths), slot.layer, slot.layer + 1, scale))
    if path[-1].source != recipe.shell_source:
        slices.append(_slice(shell, 0, 0))
    # base_model: the output's config.json is the shell's (else mergekit picks any model's)
    passthrough = {
        "merge_method": "passthrough",
        "base_model": shell,
        "slices": slices,
        "dtype": "float32",
    }
    uses_merge = MERGED in {s.source for s in path} | {recipe.shell_source}
    if merge_stage is None or not uses_merge:
        return [passthrough]
    return [{"name": MERGED, **merge_stage}, passthrough]


def mergekit_export(
    recipe: Recipe,
    model_paths: Mapping[str, str],
    num_layers: int,
    residual_out: Sequence[str] | None = None,
) -> MergekitExport:
    """The mergekit configs (``to_mergekit``) with what mergekit cannot reproduce."""
    stages = to_mergekit(recipe, model_paths, num_layers, residual_out)
    notes = []
    ran_merge = any(s["merge_method"] != "passthrough" for s in stages)
    merge = recipe.merge if ran_merge else None
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
            "(merge_env.merging.arch.Family.residual_out)"
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
