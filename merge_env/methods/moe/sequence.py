"""Sequence-level MoE plumbing shared by perplexity routing and heterogeneous experts.

MergeME (arXiv:2502.00997) routes whole sequences: the prompt picks the experts. Scored by teacher
forcing, a model sees prompt and answer in one input, so routing must not look ahead: here the
weights at position t come from tokens 0..t only (a *prefix* decision). At the prompt's last
token -- the position that predicts the first answer token -- the decision is exactly the
prompt-level one; later positions keep refining it with the tokens produced so far, which is what
greedy generation that re-routes at each step does. Teacher-forced scores therefore equal greedy
generation. ``prompt_lengths`` freezes the decision at the prompt's end instead (the paper's
variant), still causally.

A module saves to a folder: ``config.json`` (our own schema, no ``model_type``) and safetensors
weights written by ``merge_env.merging.checkpoint``'s atomic writer, plus the tokenizer files when given.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from merge_env.errors import CheckpointError, ConfigError, MergeError
from merge_env.merging.checkpoint import save_checkpoint

log = logging.getLogger(__name__)

FORMAT_KEY = "mergegym_moe"


@dataclass
class MoEOutput:
    """Logits (B, T, V) and the routing weights (B, T, K) that produced them."""

    logits: torch.Tensor
    routing: torch.Tensor


def encode_prompts(tokenizer: Any, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of each prompt as a generation would get them (no trailing EOS/SEP)."""
    specials = set(getattr(tokenizer, "all_special_ids", [])) - {tokenizer.bos_token_id}
    out = []
    for prompt, ids in zip(prompts, tokenizer(list(prompts))["input_ids"]):
        ids = list(ids)
        while ids and ids[-1] in specials:
            ids.pop()
        if not ids:
            raise ConfigError(f"prompt {prompt!r} encodes to no tokens")
        out.append(ids)
    return out


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), right-padded to the longest sequence."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (right padding)."""
    return (attention_mask.sum(dim=1) - 1).clamp(min=0).long()


def topk_weights(scores: torch.Tensor, top_k: int, temperature: float = 1.0) -> torch.Tensor:
    """Softmax over each row's top-k scores, zero elsewhere (same shape as ``scores``)."""
    k = min(top_k, scores.shape[-1])
    val, idx = torch.topk(scores / temperature, k, dim=-1)
    out = torch.zeros_like(scores)
    return out.scatter(-1, idx, torch.softmax(val, dim=-1))


def freeze_at_prompt(weights: torch.Tensor, prompt_lengths: torch.Tensor | None) -> torch.Tensor:
    """Weights from the prompt's last token onwards replaced by that token's (causal)."""
    if prompt_lengths is None:
        return weights
    t = torch.arange(weights.shape[1], device=weights.device)[None, :]
    last = (prompt_lengths.to(weights.device).long() - 1).clamp(min=0)
    at_end = weights[torch.arange(weights.shape[0], device=weights.device), last]  # (B, K)
    keep = (t < last[:, None])[..., None]
    return torch.where(keep, weights, at_end[:, None, :])


class SequenceMoE(nn.Module):
    """Base of our sequence-routed MoE modules: routing report, greedy generation, save/load."""

    kind: ClassVar[str] = ""
    expert_names: list[str]

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
    ) -> MoEOutput:
        """Logits of the mixture, routed per prefix (see the module docstring)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return next(self.parameters()).device

    @torch.no_grad()
    def route(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sequence-level routing weights (B, K) decided on each whole input (e.g. a prompt)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self(input_ids=input_ids, attention_mask=attention_mask)
        rows = torch.arange(input_ids.shape[0], device=out.routing.device)
        return out.routing[rows, last_index(attention_mask).to(out.routing.device)]

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        freeze_routing: bool = False,
    ) -> torch.Tensor:
        """Greedy continuation of unpadded prompts (B, T): a simple loop over full forwards.

        ``freeze_routing`` keeps the prompt's decision for every new token (the paper's variant).
        """
        ids = input_ids.to(self.device)
        plen = torch.full((ids.shape[0],), ids.shape[1], device=ids.device)
        done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        for _ in range(max_new_tokens):
            out = self(input_ids=ids, prompt_lengths=plen if freeze_routing else None)
            nxt = out.logits[:, -1].argmax(dim=-1)
            if eos_token_id is not None:
                nxt = torch.where(done, torch.full_like(nxt, eos_token_id), nxt)
                done |= nxt == eos_token_id
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if eos_token_id is not None and bool(done.all()):
                break
        return ids

    # -- persistence -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """What ``from_config`` needs to rebuild the module's shape (no weights)."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SequenceMoE:
        """An untrained module of the shape ``config`` describes."""
        raise NotImplementedError

    def save(self, out_dir: str | Path, *, tokenizer_dir: str | Path | None = None,
             overwrite: bool = False) -> Path:  # fmt: skip
        """Write config.json + safetensors (atomically); tokenizer files copied when given."""
        config = {FORMAT_KEY: self.kind, "format_version": 1, **self.config_dict()}
        state = {n: t.detach().cpu().contiguous() for n, t in self.state_dict().items()}
        return save_checkpoint(
            state, out_dir, config=config, side_files_from=tokenizer_dir, overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> SequenceMoE:
        """A module saved by ``save``; CheckpointError naming the folder when it is not one."""
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}/config.json: unreadable ({exc})") from None
        if config.get(FORMAT_KEY) != cls.kind:
            raise CheckpointError(
                f"{path}/config.json: {FORMAT_KEY}={config.get(FORMAT_KEY)!r}, expected "
                f"{cls.kind!r} (is this a {cls.__name__} folder?)"
            )
        module = cls.from_config(config)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{path}: no safetensors weights")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CheckpointError(
                f"{path}: weights do not fit the config (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
        return module.to(device).eval()


def check_top_k(top_k: int, num_experts: int, where: str) -> None:
    """MergeError unless 1 <= top_k <= num_experts."""
    if not 1 <= top_k <= num_experts:
        raise MergeError(f"{where}: top_k={top_k} must lie in [1, {num_experts}]")


@torch.no_grad()
def routing_confusion(
    moe: SequenceMoE,
    tokenizer: Any,
    prompts: dict[str, Sequence[str]],
    *,
    batch_size: int = 64,
) -> dict[str, dict[str, int]]:
    """{task: {expert: prompts of the task whose top expert it is}}, decided on each prompt."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out: dict[str, dict[str, int]] = {}
    for task, texts in prompts.items():
        counts = dict.fromkeys(moe.expert_names, 0)
        encoded = encode_prompts(tokenizer, list(texts))
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_right(encoded[start : start + batch_size], pad)
            top = moe.route(ids.to(moe.device), mask.to(moe.device)).argmax(dim=-1)
            for k in top.tolist():
                counts[moe.expert_names[k]] += 1
        out[task] = counts
    return out
