"""Per-family tensor layout: which tensor names belong to layer l, the embeddings, final norm, head.

Only the layout is known here; no tensor is read. Families share one description each, so a new
family is one entry in ``FAMILIES``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from merge_env.errors import CheckpointError

Part = Literal["embed", "attn", "mlp", "norm", "final_norm", "head", "other"]


@dataclass(frozen=True)
class Family:
    """The naming scheme of one model family (Llama, Mistral, Qwen2, GPT-2, ...)."""

    name: str
    model_types: tuple[str, ...]
    layers_prefix: str  # tensors of layer l start with f"{layers_prefix}{l}."
    embed: tuple[str, ...]  # full names of embedding tensors (token, and position where any)
    final_norm: str  # prefix of the final norm's tensors
    head: str  # the output projection's weight
    attn_markers: tuple[str, ...]
    mlp_markers: tuple[str, ...]
    # submodules whose output is a residual branch: scaling their weights (and bias) by c scales
    # that branch, which is how a slot's residual scale is baked into a materialised checkpoint
    residual_out: tuple[str, ...] = ("self_attn.o_proj", "mlp.down_proj")
    num_layers_keys: tuple[str, ...] = ("num_hidden_layers", "n_layer")
    strippable_prefix: str = (
        ""  # some files omit it (original GPT-2 weights have no "transformer.")
    )


_LLAMA_LIKE = dict(
    layers_prefix="model.layers.",
    embed=("model.embed_tokens.weight",),
    final_norm="model.norm.",
    head="lm_head.weight",
    attn_markers=(".self_attn.",),
    mlp_markers=(".mlp.", ".block_sparse_moe."),
)

FAMILIES: dict[str, Family] = {
    "llama": Family("llama", ("llama",), **_LLAMA_LIKE),
    "mistral": Family("mistral", ("mistral",), **_LLAMA_LIKE),
    "mixtral": Family("mixtral", ("mixtral",), **_LLAMA_LIKE),
    "qwen2": Family("qwen2", ("qwen2",), **_LLAMA_LIKE),
    "gpt2": Family(
        "gpt2",
        ("gpt2",),
        layers_prefix="transformer.h.",
        embed=("transformer.wte.weight", "transformer.wpe.weight"),
        final_norm="transformer.ln_f.",
        head="lm_head.weight",
        attn_markers=(".attn.",),
        mlp_markers=(".mlp.",),
        residual_out=("attn.c_proj", "mlp.c_proj"),
        strippable_prefix="transformer.",
    ),
}

_NORM_WORDS = ("layernorm", "ln_", "norm")


@dataclass(frozen=True)
class ArchInfo:
    """A family plus the facts of one config: depth, tied head, and whether names carry a prefix."""

    family: Family
    num_layers: int
    tied: bool
    prefix_stripped: bool = False

    def _full(self, name: str) -> str:
        """Name as the family spells it (re-adds a stripped prefix)."""
        if self.prefix_stripped and not name.startswith(self.family.strippable_prefix):
            if name != self.family.head:
                return self.family.strippable_prefix + name
        return name

    def _own(self, full: str) -> str:
        """Name as this checkpoint spells it."""
        if self.prefix_stripped and full.startswith(self.family.strippable_prefix):
            return full[len(self.family.strippable_prefix) :]
        return full

    @property
    def layers_prefix(self) -> str:
        """Prefix of per-layer tensors as this checkpoint spells it."""
        return self._own(self.family.layers_prefix)

    @property
    def embed_names(self) -> tuple[str, ...]:
        """Embedding tensor names (token embeddings first)."""
        return tuple(self._own(n) for n in self.family.embed)

    @property
    def head_name(self) -> str:
        """The output head's weight name (absent from the file when tied)."""
        return self.family.head

    def layer_of(self, name: str) -> int | None:
        """The decoder layer index a tensor belongs to, or None for non-layer tensors."""
        full = self._full(name)
        prefix = self.family.layers_prefix
        if not full.startswith(prefix):
            return None
        m = re.match(r"(\d+)\.", full[len(prefix) :])
        return int(m.group(1)) if m else None

    def part_of(self, name: str) -> Part:
        """Which part of the model a tensor belongs to."""
        full = self._full(name)
        if full in self.family.embed:
            return "embed"
        if full == self.family.head:
            return "head"
        if full.startswith(self.family.final_norm):
            return "final_norm"
        if self.layer_of(name) is None:
            return "other"
        rest = full[len(self.family.layers_prefix) :]
        rest = rest[rest.index(".") :]
        if any(m in rest for m in self.family.attn_markers):
            return "attn"
        if any(m in rest for m in self.family.mlp_markers):
            return "mlp"
        if any(w in rest for w in _NORM_WORDS):
            return "norm"
        return "other"

    def rename_layer(self, name: str, new_layer: int) -> str:
        """The same tensor name moved to layer ``new_layer``."""
        layer = self.layer_of(name)
        if layer is None:
            raise CheckpointError(f"tensor {name!r} does not belong to a decoder layer")
        prefix = self.layers_prefix
        return f"{prefix}{new_layer}{name[len(prefix) + len(str(layer)) :]}"

    def is_residual_out(self, name: str) -> bool:
        """Whether a layer tensor belongs to a residual-branch output projection."""
        full = self._full(name)
        return self.layer_of(name) is not None and any(
            f".{m}." in full for m in self.family.residual_out
        )

    def layer_tensor_names(self, names: Iterable[str], layer: int) -> list[str]:
        """Tensor names (from ``names``) that belong to decoder layer ``layer``."""
        return [n for n in names if self.layer_of(n) == layer]

    def relative_depth(self, layer: int) -> float:
        """Layer position in [0, 1], the coordinate mergekit's gradients interpolate over."""
        return 0.0 if self.num_layers <= 1 else layer / (self.num_layers - 1)


def family_of(config: Mapping[str, Any], where: str = "config.json") -> Family:
    """The family of an HF config dict; raises CheckpointError naming ``where`` when unknown."""
    model_type = config.get("model_type")
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise CheckpointError(
        f"{where}: unknown architecture model_type={model_type!r} "
        f"(architectures={config.get('architectures')}); supported: {', '.join(known)}"
    )


def arch_from_config(
    config: Mapping[str, Any],
    tensor_names: Iterable[str] | None = None,
    where: str = "config.json",
) -> ArchInfo:
    """ArchInfo for an HF config; ``tensor_names`` (when known) detects a stripped GPT-2 prefix."""
    family = family_of(config, where)
    num_layers = next((config[k] for k in family.num_layers_keys if k in config), None)
    if not isinstance(num_layers, int) or num_layers < 1:
        raise CheckpointError(
            f"{where}: missing or bad number of layers ({family.num_layers_keys})"
        )
    default_tied = family.name == "gpt2"
    tied = bool(config.get("tie_word_embeddings", default_tied))
    stripped = False
    if tensor_names is not None and family.strippable_prefix:
        names = list(tensor_names)
        stripped = bool(names) and not any(n.startswith(family.strippable_prefix) for n in names)
    return ArchInfo(family=family, num_layers=num_layers, tied=tied, prefix_stripped=stripped)
