"""Token-level routers for the Mixtral build, set from a few prompts per expert (no training).

MergeME (arXiv:2502.00997, §3.2) initialises router rows from the experts' own hidden states on
their domain data instead of fine-tuning the router. Row k of layer l is the centroid of the MLP
inputs (the post-attention-norm hidden states, which is what a Mixtral router sees) that expert k
produces at layer l on prompts of its task:

* ``hidden_mean``: centroid over every prompt token; ``hidden_last``: over the last prompt token.
* ``embedding``: the expert's mean token embedding of its prompts, the same row in every layer
  (a cheap baseline that ignores depth).
* ``random``: seeded Gaussian rows (a control).

Rows are centred across experts: a component shared by every row adds the same logit to every
expert and cancels in the softmax, so centring changes no decision and keeps logits small.
``scale`` multiplies the rows (it only changes the weights of a top-k > 1 mixture).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from merge_env.errors import ConfigError, MergeError
from merge_env.methods.moe.sequence import encode_prompts, last_index, pad_right
from merge_env.search.assemble import load_causal_lm

ROUTER_METHODS = ("hidden_mean", "hidden_last", "embedding", "random")


@torch.no_grad()
def _mlp_inputs(model: Any, ids: torch.Tensor, mask: torch.Tensor, last_only: bool) -> torch.Tensor:
    """(layers, hidden): centroid of each layer's MLP input over the prompts' tokens."""
    layers = model.base_model.layers
    sums: list[torch.Tensor] = []

    def hook(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
        h = args[0].float()  # (B, T, D)
        if last_only:
            rows = torch.arange(h.shape[0], device=h.device)
            sums.append(h[rows, last_index(mask).to(h.device)].mean(dim=0))
        else:
            m = mask.to(h.device, h.dtype)[..., None]
            sums.append((h * m).sum(dim=(0, 1)) / m.sum())

    handles = [layer.mlp.register_forward_pre_hook(hook) for layer in layers]
    try:
        device = next(model.parameters()).device
        model(input_ids=ids.to(device), attention_mask=mask.to(device))
    finally:
        for h in handles:
            h.remove()
    return torch.stack(sums)


def router_rows(
    method: str,
    experts: Sequence[str | Path],
    prompts: Sequence[Sequence[str]] | None = None,
    tokenizer: Any = None,
    *,
    seed: int = 0,
    scale: float = 1.0,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Router weights of shape (layers, K, hidden) for ``experts`` (paths, in MoE order).

    ``prompts[k]`` are a few prompts of expert k's task (needed by every method but ``random``).
    """
    if method not in ROUTER_METHODS:
        raise ConfigError(f"router method {method!r}; expected one of {ROUTER_METHODS}")
    if not experts:
        raise MergeError("router: no experts given")
    config = AutoConfig.from_pretrained(experts[0])
    layers, hidden, k = config.num_hidden_layers, config.hidden_size, len(experts)
    if method == "random":
        gen = torch.Generator().manual_seed(seed)
        std = getattr(config, "initializer_range", 0.02)
        return scale * std * torch.randn(layers, k, hidden, generator=gen)
    if prompts is None or tokenizer is None or len(prompts) != k:
        raise ConfigError(f"router {method!r}: needs a tokenizer and one prompt list per expert")
    rows = []
    for path, texts in zip(experts, prompts):
        if not texts:
            raise ConfigError(f"router {method!r}: no prompts for expert {path}")
        ids, mask = pad_right(encode_prompts(tokenizer, texts), tokenizer.pad_token_id or 0)
        model = load_causal_lm(path, torch.float32).to(device).eval()
        if (model.config.num_hidden_layers, model.config.hidden_size) != (layers, hidden):
            raise MergeError(
                f"router: expert {path} has {model.config.num_hidden_layers} layers of width "
                f"{model.config.hidden_size}; the first expert {layers} of width {hidden}"
            )
        if method == "embedding":
            emb = model.get_input_embeddings()(ids.to(device)).float()
            m = mask.to(device, emb.dtype)[..., None]
            row = ((emb * m).sum(dim=(0, 1)) / m.sum()).expand(layers, hidden)
        else:
            row = _mlp_inputs(model, ids, mask, last_only=method == "hidden_last")
        rows.append(row.cpu())
        del model
    table = torch.stack(rows, dim=1)  # (layers, K, hidden)
    return scale * (table - table.mean(dim=1, keepdim=True))


@torch.no_grad()
def token_routing_share(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[str]], *, batch_size: int = 64
) -> list[float]:
    """Per expert k: the share of (prompt token, layer) top-1 choices of a Mixtral that are k,
    over prompts of expert k's task -- how often token-level routing finds the task's expert."""
    device = next(model.parameters()).device
    shares = []
    for k, texts in enumerate(prompts):
        hits = total = 0
        encoded = encode_prompts(tokenizer, list(texts))
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_right(encoded[start : start + batch_size], tokenizer.pad_token_id or 0)
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        output_router_logits=True)  # fmt: skip
            real = mask.reshape(-1).bool().to(device)
            for logits in out.router_logits:  # one (tokens, K) per layer
                top = logits.argmax(dim=-1)[real]
                hits += int((top == k).sum())
                total += int(top.numel())
        shares.append(hits / max(total, 1))
    return shares
