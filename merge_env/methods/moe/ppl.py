"""MergeME's perplexity routing: each sequence goes to the experts that find it least surprising.

MergeME (Zhou et al. 2025, arXiv:2502.00997, §3.2) routes without training a router: the prompt
is scored by every expert, and the top-k experts by 1/PPL take the sequence, weighted by a
softmax. Here the score of expert k at position t is log(1/PPL_k) = -mean NLL of tokens 1..t
under expert k, so the softmax (temperature 1) of the scores is exactly 1/PPL normalised.
Routing is per prefix (see ``merge_env.methods.moe.sequence``): at the prompt's last token it is the
prompt-level decision.

Two variants:
* ``separate`` attention: every expert is a whole dense model; the output is the weighted mixture
  of the experts' next-token distributions (log-probabilities are returned as logits).
* ``merged`` attention: one model whose shared parameters are merged (TIES, DARE, average...) and
  whose MLP in every layer is the routed mixture of the experts' MLPs (BTX's layout, routed per
  sequence). Expert k's perplexity is measured with expert k's MLPs in every layer.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from merge_env.errors import MergeError
from merge_env.merging.plan import ParamMerge
from merge_env.methods.moe.mixtral import merged_dense_model, shared_merge
from merge_env.methods.moe.sequence import (
    MoEOutput,
    SequenceMoE,
    check_top_k,
    freeze_at_prompt,
    topk_weights,
)
from merge_env.search.assemble import load_causal_lm

ATTENTION = ("separate", "merged")


def prefix_mean_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T): mean NLL of the real tokens 1..t at each position t (0 where none is seen yet)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    # a token counts when it and its predecessor are real (left padding never scores a pad)
    valid = (attention_mask[:, 1:] * attention_mask[:, :-1]).to(nll.dtype)
    total = torch.cumsum(nll * valid, dim=1)
    count = torch.cumsum(valid, dim=1).clamp(min=1.0)
    zero = torch.zeros_like(total[:, :1])
    return torch.cat([zero, total / count], dim=1)


class ExpertMLPs(nn.Module):
    """One layer's expert MLPs, mixed with the routing weights the owner sets for this call."""

    def __init__(self, mlps: list[nn.Module]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(mlps)
        self.weights: torch.Tensor | None = None  # (B, T, K), set by PplRoutedMoE per forward
        self.only: int | None = None  # run a single expert (perplexity of expert k)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Weighted sum of the experts' outputs; experts with zero weight everywhere are skipped."""
        if self.only is not None:
            return self.experts[self.only](hidden)
        w = self.weights
        if w is None or w.shape[:2] != hidden.shape[:2]:
            raise MergeError("ExpertMLPs called without routing weights for this input")
        out = torch.zeros_like(hidden)
        for k, mlp in enumerate(self.experts):
            wk = w[..., k : k + 1]
            if bool((wk != 0).any()):
                out = out + wk.to(hidden.dtype) * mlp(hidden)
        return out


class PplRoutedMoE(SequenceMoE):
    """Experts chosen per sequence by 1/PPL; ``separate`` or ``merged`` attention (see module)."""

    kind = "ppl_routed"

    def __init__(
        self,
        models: list[PreTrainedModel],
        expert_names: list[str],
        *,
        attention: str = "separate",
        top_k: int = 1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION:
            raise MergeError(f"attention={attention!r}; expected one of {ATTENTION}")
        if temperature <= 0:
            raise MergeError(f"temperature must be > 0, got {temperature}")
        self.attention = attention
        self.expert_names = list(expert_names)
        check_top_k(top_k, len(self.expert_names), "perplexity routing")
        self.top_k, self.temperature = top_k, float(temperature)
        if attention == "separate" and len(models) != len(self.expert_names):
            raise MergeError(f"{len(models)} models for {len(self.expert_names)} expert names")
        if attention == "merged" and len(models) != 1:
            raise MergeError("merged attention holds one shared model with ExpertMLPs layers")
        self.models = nn.ModuleList(models)
        self._mlps = [m for m in self.models.modules() if isinstance(m, ExpertMLPs)]

    @property
    def num_experts(self) -> int:
        """K."""
        return len(self.expert_names)

    @contextlib.contextmanager
    def _routed(self, weights: torch.Tensor | None, only: int | None) -> Iterator[None]:
        for m in self._mlps:
            m.weights, m.only = weights, only
        try:
            yield
        finally:
            for m in self._mlps:
                m.weights, m.only = None, None

    def expert_logits(
        self, k: int, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Logits of expert k alone (its whole model, or the shared model with its MLPs)."""
        if self.attention == "separate":
            return self.models[k](input_ids=input_ids, attention_mask=attention_mask).logits
        with self._routed(None, k):
            return self.models[0](input_ids=input_ids, attention_mask=attention_mask).logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
    ) -> MoEOutput:
        """Mixture logits (B, T, V) with per-prefix 1/PPL routing weights (B, T, K)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        per_expert = [
            self.expert_logits(k, input_ids, attention_mask) for k in range(self.num_experts)
        ]
        scores = torch.stack(
            [-prefix_mean_nll(lg, input_ids, attention_mask) for lg in per_expert], dim=-1
        )
        weights = freeze_at_prompt(
            topk_weights(scores, self.top_k, self.temperature), prompt_lengths
        )
        if self.attention == "separate":
            # log sum_k w_k p_k, one expert at a time: a (B, T, V) working copy or two, not K
            # stacked ones (with SmolLM2's 49k words, a batch of 64 passages of 170 tokens
            # is 2.1 GB a copy; stacked, two experts went past 24 GB). Where one weight is
            # nonzero (top-1) the result is that expert's log-softmax exactly, as before.
            logw = torch.where(weights > 0, weights.log(), torch.full_like(weights, -torch.inf))
            logits = None
            for k in range(len(per_expert)):
                lg = per_expert.pop(0)  # each expert's logits freed once folded in
                term = F.log_softmax(lg.float(), dim=-1).add_(logw[..., k, None])
                logits = term if logits is None else torch.logaddexp(logits, term)
                del lg
        else:
            with self._routed(weights, None):
                logits = self.models[0](input_ids=input_ids, attention_mask=attention_mask).logits
        return MoEOutput(logits=logits, routing=weights)

    # -- persistence -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Expert names, routing settings and the HF config of the underlying model(s)."""
        return {
            "attention": self.attention,
            "experts": self.expert_names,
            "top_k": self.top_k,
            "temperature": self.temperature,
            "model_configs": [m.config.to_dict() for m in self.models],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PplRoutedMoE:
        """An untrained module of the saved shape."""
        models = []
        for c in config["model_configs"]:
            c = dict(c)
            hf = AutoConfig.for_model(c.pop("model_type"), **c)
            models.append(AutoModelForCausalLM.from_config(hf))
        if config["attention"] == "merged":
            _swap_in_expert_mlps(models[0], [None] * len(config["experts"]))
        return cls(
            models, config["experts"], attention=config["attention"], top_k=config["top_k"],
            temperature=config["temperature"],
        )  # fmt: skip


class ForcedExpert(nn.Module):
    """Expert k of a PplRoutedMoE as a model of its own: oracle routing, every token to k.

    With merged attention this is the shared merge with expert k's MLPs -- what a top-1
    Mixtral of the same shared merge computes when its router picks k everywhere -- so scoring
    it on k's task separates the cost of merging the shared parameters from routing errors.
    """

    def __init__(self, moe: PplRoutedMoE, k: int) -> None:
        super().__init__()
        if not 0 <= k < moe.num_experts:
            raise MergeError(f"expert index {k} outside [0, {moe.num_experts})")
        self.moe, self.k = moe, k

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> MoEOutput:
        """Expert k's logits; the routing is one-hot on k."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        logits = self.moe.expert_logits(self.k, input_ids, attention_mask)
        routing = torch.zeros(*input_ids.shape, self.moe.num_experts, device=logits.device)
        routing[..., self.k] = 1.0
        return MoEOutput(logits=logits, routing=routing)


def _swap_in_expert_mlps(model: PreTrainedModel, per_expert: list[PreTrainedModel | None]) -> None:
    """Replace every layer's MLP by ExpertMLPs holding expert k's MLP (a fresh copy when None)."""
    for i, layer in enumerate(model.base_model.layers):
        mlps = [
            copy.deepcopy(layer.mlp) if src is None else src.base_model.layers[i].mlp
            for src in per_expert
        ]
        layer.mlp = ExpertMLPs(mlps)


def _load(path: str | Path, device: str | torch.device, dtype: torch.dtype) -> PreTrainedModel:
    """A dense HF checkpoint, frozen, in eval mode on ``device``."""
    model = load_causal_lm(path, dtype)
    return model.to(device).eval().requires_grad_(False)


def ppl_moe_separate(
    experts: Mapping[str, str | Path],
    *,
    top_k: int = 1,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PplRoutedMoE:
    """Perplexity routing over whole expert models (each keeps its own attention)."""
    if not experts:
        raise MergeError("perplexity routing: no experts given")
    models = [_load(p, device, dtype) for p in experts.values()]
    vocab = {m.config.vocab_size for m in models}
    if len(vocab) != 1:
        raise MergeError(f"experts {list(experts)} have different vocabularies ({sorted(vocab)})")
    return PplRoutedMoE(models, list(experts), attention="separate", top_k=top_k,
                        temperature=temperature).eval()  # fmt: skip


def ppl_moe_merged(
    base: str | Path,
    experts: Mapping[str, str | Path],
    *,
    shared: ParamMerge | None = None,
    top_k: int = 1,
    temperature: float = 1.0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PplRoutedMoE:
    """Perplexity routing over expert MLPs in one model whose shared parameters are merged."""
    if not experts:
        raise MergeError("perplexity routing: no experts given")
    spec = shared or shared_merge(base, list(experts.values()), "linear")
    model = merged_dense_model(spec, device=device, dtype=dtype)
    sources = [_load(p, device, dtype) for p in experts.values()]
    for name, src in zip(experts, sources):
        if src.config.num_hidden_layers != model.config.num_hidden_layers:
            raise MergeError(
                f"expert {name!r} ({experts[name]}) has {src.config.num_hidden_layers} layers, "
                f"the merged model {model.config.num_hidden_layers}"
            )
    _swap_in_expert_mlps(model, sources)
    return PplRoutedMoE([model], list(experts), attention="merged", top_k=top_k,
                        temperature=temperature).eval()  # fmt: skip
