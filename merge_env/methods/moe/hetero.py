"""MergeME, heterogeneous case: experts of different width or depth behind one sequence router.

MergeME (Zhou et al. 2025, arXiv:2502.00997, §3.3) merges experts whose architectures differ:
the token embedding and the output head are shared, padded to the widest expert's width D; each
expert k keeps its own decoder stack and gets a projection in (D -> d_k) and out (d_k -> D); a
sequence-level router on the mean token embedding picks the experts; then only the projections
and the router are trained, briefly.

The shared embedding (head) is the mean of the experts' embeddings (heads) zero-padded to D. The
projections start either as the padding's inverse (``identity``: keep the first d_k coordinates)
or, our default, as the ridge least-squares fit that maps the shared table back onto expert k's
own (``lstsq``): with a vocabulary no larger than D the fit is exact, so before any training every
expert computes what it computed alone and training only has to find the routing. Routing is per
prefix (``merge_env.methods.moe.sequence``). Training uses perplexity routing as the teacher: per sequence,
the expert with the lowest answer loss gets the sequence (its projections learn from it) and the
router is trained towards it by cross-entropy; inference takes the router's top-k.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from merge_env.errors import ConfigError, MergeError
from merge_env.methods.moe.sequence import (
    MoEOutput,
    SequenceMoE,
    check_top_k,
    freeze_at_prompt,
    topk_weights,
)
from merge_env.scoring.tasks.task import Example
from merge_env.search.assemble import load_causal_lm

INITS = ("lstsq", "identity")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _body(model: nn.Module) -> nn.Module:
    """The expert's decoder stack (with its final norm), its token embedding dropped."""
    body = model.base_model
    body.embed_tokens = None  # inputs arrive as embeddings through proj_in
    return body


class HeteroMoE(SequenceMoE):
    """Shared embedding/head of width D, per-expert stacks with projections, a sequence router."""

    kind = "hetero"

    def __init__(
        self,
        bodies: list[nn.Module],
        body_configs: list[dict[str, Any]],
        expert_names: list[str],
        vocab_size: int,
        *,
        top_k: int = 1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.expert_names = list(expert_names)
        check_top_k(top_k, len(self.expert_names), "heterogeneous MoE")
        self.top_k, self.temperature = top_k, float(temperature)
        self.body_configs = [dict(c) for c in body_configs]
        self.widths = [int(c["hidden_size"]) for c in self.body_configs]
        width = max(self.widths)
        self.embed = nn.Embedding(vocab_size, width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.bodies = nn.ModuleList(bodies).requires_grad_(False)
        self.proj_in = nn.ModuleList(nn.Linear(width, d, bias=False) for d in self.widths)
        self.proj_out = nn.ModuleList(nn.Linear(d, width, bias=False) for d in self.widths)
        self.router = nn.Linear(width, len(self.expert_names))
        self.embed.requires_grad_(False)
        self.head.requires_grad_(False)

    def router_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, K): the router on the mean token embedding of each prefix (RMS-normalised)."""
        e = self.embed(input_ids)
        m = attention_mask.to(e.dtype)[..., None]
        mean = torch.cumsum(e * m, dim=1) / torch.cumsum(m, dim=1).clamp(min=1.0)
        # embeddings are small (init std ~0.02): unit RMS lets the router learn at a normal lr
        mean = mean * torch.rsqrt(mean.pow(2).mean(dim=-1, keepdim=True) + 1e-12)
        return self.router(mean)

    def expert_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, experts: Sequence[int]
    ) -> dict[int, torch.Tensor]:
        """{k: (B, T, D)}: expert k's final hidden states, projected out to the shared width."""
        e = self.embed(input_ids)
        out = {}
        for k in experts:
            h = self.bodies[k](inputs_embeds=self.proj_in[k](e), attention_mask=attention_mask)
            out[k] = self.proj_out[k](h.last_hidden_state)
        return out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prompt_lengths: torch.Tensor | None = None,
    ) -> MoEOutput:
        """Logits of the routed mixture (top-k of the router, per prefix)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        scores = self.router_logits(input_ids, attention_mask)
        weights = topk_weights(scores, self.top_k, self.temperature)
        weights = freeze_at_prompt(weights, prompt_lengths)
        used = [k for k in range(len(self.bodies)) if bool((weights[..., k] != 0).any())]
        states = self.expert_states(input_ids, attention_mask, used)
        mixed = sum(weights[..., k : k + 1].to(states[k].dtype) * states[k] for k in used)
        return MoEOutput(logits=self.head(mixed), routing=weights)

    def trainable(self, lr: float, proj_lr: float) -> list[dict[str, Any]]:
        """Optimiser groups of what MergeME trains: the router, and the projections in and out."""
        proj = [*self.proj_in.parameters(), *self.proj_out.parameters()]
        groups: list[dict[str, Any]] = [{"params": list(self.router.parameters()), "lr": lr}]
        return groups + ([{"params": proj, "lr": proj_lr}] if proj_lr > 0 else [])

    # -- persistence -------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Expert names, routing settings, vocabulary size and every expert's HF config."""
        return {
            "experts": self.expert_names,
            "top_k": self.top_k,
            "temperature": self.temperature,
            "vocab_size": self.embed.num_embeddings,
            "body_configs": self.body_configs,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> HeteroMoE:
        """An untrained module of the saved shape."""
        bodies = []
        for c in config["body_configs"]:
            c = dict(c)
            hf = AutoConfig.for_model(c.pop("model_type"), **c)
            bodies.append(_body(AutoModelForCausalLM.from_config(hf)))
        return cls(
            bodies, config["body_configs"], config["experts"], config["vocab_size"],
            top_k=config["top_k"], temperature=config["temperature"],
        )  # fmt: skip


def _vocab_of(path: Path) -> dict[str, int] | None:
    """The tokenizer vocabulary saved beside a checkpoint, or None when it has none."""
    if not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    return dict(AutoTokenizer.from_pretrained(path).get_vocab())


def check_hetero_shapes(experts: Mapping[str, str | Path]) -> dict[str, tuple[int, int, int]]:
    """{expert: (vocab, width, depth)} from the configs; MergeError for a pair that cannot mix."""
    if len(experts) < 2:
        raise MergeError(f"heterogeneous MoE needs at least two experts, got {list(experts)}")
    shapes, vocabs = {}, {}
    for name, path in experts.items():
        cfg = AutoConfig.from_pretrained(path)
        shapes[name] = (int(cfg.vocab_size), int(cfg.hidden_size), int(cfg.num_hidden_layers))
        vocabs[name] = _vocab_of(Path(path))
    names = list(experts)
    first = names[0]
    for name in names[1:]:
        if shapes[name][0] != shapes[first][0]:
            raise MergeError(
                f"experts {first!r} ({experts[first]}) and {name!r} ({experts[name]}) have "
                f"different vocabularies ({shapes[first][0]} vs {shapes[name][0]} tokens): "
                "a shared embedding and head need one tokenizer"
            )
        if vocabs[first] is not None and vocabs[name] is not None and vocabs[first] != vocabs[name]:
            raise MergeError(
                f"experts {first!r} ({experts[first]}) and {name!r} ({experts[name]}) ship "
                "different tokenizers (same size, different token ids)"
            )
    return shapes


def _ridge(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-9) -> torch.Tensor:
    """argmin_X |a X - b|^2 + lam |X|^2 (lam relative to a's scale), solved in float64."""
    a, b = a.double(), b.double()
    lam = rel * float((a * a).sum()) / a.shape[1]
    eye = (lam**0.5) * torch.eye(a.shape[1], dtype=a.dtype)
    aug_a = torch.cat([a, eye])
    aug_b = torch.cat([b, torch.zeros(a.shape[1], b.shape[1], dtype=b.dtype)])
    return torch.linalg.lstsq(aug_a, aug_b).solution


def _pad(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t.float(), (0, width - t.shape[1]))


def build_hetero(
    experts: Mapping[str, str | Path],
    *,
    top_k: int = 1,
    temperature: float = 1.0,
    init: str = "lstsq",
    device: str | torch.device = "cpu",
) -> HeteroMoE:
    """An untrained heterogeneous MoE over ``experts`` (paths of HF causal LMs, one tokenizer)."""
    if init not in INITS:
        raise ConfigError(f"hetero init {init!r}; expected one of {INITS}")
    shapes = check_hetero_shapes(experts)
    models = [load_causal_lm(p, torch.float32) for p in experts.values()]
    embeds, heads = [], []
    for (name, path), model in zip(experts.items(), models):
        emb = model.get_input_embeddings().weight.detach()
        head = model.get_output_embeddings().weight.detach()
        vocab, width, _ = shapes[name]
        for what, t in (("input embedding", emb), ("output head", head)):
            if tuple(t.shape) != (vocab, width):
                raise MergeError(
                    f"expert {name!r} ({path}): {what} has shape {tuple(t.shape)}, expected "
                    f"(vocab, hidden) = {(vocab, width)}"
                )
        embeds.append(emb)
        heads.append(head)
    width = max(s[1] for s in shapes.values())
    shared_e = torch.stack([_pad(t, width) for t in embeds]).mean(dim=0)
    shared_h = torch.stack([_pad(t, width) for t in heads]).mean(dim=0)
    configs = [m.config.to_dict() for m in models]
    vocab = next(iter(shapes.values()))[0]
    moe = HeteroMoE([_body(m) for m in models], configs, list(experts), vocab,
                    top_k=top_k, temperature=temperature)  # fmt: skip
    with torch.no_grad():
        moe.embed.weight.copy_(shared_e)
        moe.head.weight.copy_(shared_h)
        for k, (emb, head) in enumerate(zip(embeds, heads)):
            d = emb.shape[1]
            if init == "lstsq":
                moe.proj_in[k].weight.copy_(_ridge(shared_e, emb).T)
                moe.proj_out[k].weight.copy_(_ridge(shared_h, head))
            else:
                moe.proj_in[k].weight.copy_(torch.eye(width)[:d])
                moe.proj_out[k].weight.copy_(torch.eye(width)[:, :d])
        moe.router.weight.zero_()
        moe.router.bias.zero_()
    return moe.to(device).eval()


def train_hetero(
    moe: HeteroMoE,
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    steps: int = 200,
    batch_size: int = 32,
    lr: float = 3e-3,
    proj_lr: float = 1e-4,
    seed: int = 0,
    router_loss: float = 1.0,
    progress: bool = True,
    eos: bool | Sequence[bool] = True,
) -> list[float]:
    """Train projections and router on answer tokens (+EOS) of ``examples``; the loss per step.
    ``eos``: whether each example's answer ends in the end token (one flag for all, or one per
    example: its task's ``Task.eos``; False for a continuation of running text).

    Per sequence the teacher is the expert whose own answer loss is lowest (1/PPL routing,
    MergeME §3.2, on the answer): the loss is that expert's answer loss (training its
    projections) plus ``router_loss`` times the router's cross-entropy towards it. ``lr`` is the
    router's learning rate, ``proj_lr`` the projections' (lower: an exact ``lstsq`` start is
    easily spoilt; 0 freezes them).
    """
    from merge_env.scoring.evaluate import Evaluator

    if not examples:
        raise ConfigError("train_hetero: no training examples")
    if router_loss <= 0 or lr <= 0 or proj_lr < 0:
        raise ConfigError(
            f"train_hetero: need router_loss > 0 and lr > 0 (the router learns from its teacher) "
            f"and proj_lr >= 0; got router_loss={router_loss}, lr={lr}, proj_lr={proj_lr}"
        )
    if isinstance(eos, str) or not isinstance(eos, Sequence):  # one flag (a numpy bool too)
        flags = [bool(eos)] * len(examples)
    else:
        flags = [bool(e) for e in eos]
    if len(flags) != len(examples):
        raise ConfigError(
            f"train_hetero: {len(flags)} eos flags for {len(examples)} training examples"
        )
    evaluator = Evaluator(tokenizer)
    encoded = [evaluator.encode([ex], eos=flag)[0] for ex, flag in zip(examples, flags)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(moe.trainable(lr, proj_lr), weight_decay=0.0)
    device = moe.device
    losses = []
    moe.eval()  # no dropout: the frozen stacks must compute what they computed alone
    bar = tqdm(range(steps), desc="hetero-moe", disable=not progress)
    for _ in bar:
        pick = torch.randint(len(encoded), (batch_size,), generator=gen).tolist()
        batch = [encoded[i] for i in pick]
        width = max(len(b.ids) for b in batch) - 1
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.full_like(ids, -100)
        for r, b in enumerate(batch):
            seq = torch.tensor(b.ids, dtype=torch.long)
            ids[r, : len(seq) - 1] = seq[:-1]
            mask[r, : len(seq) - 1] = 1
            target[r, b.n_prompt - 1 : len(seq) - 1] = seq[b.n_prompt :]
        loss = _train_loss(
            moe, ids.to(device), mask.to(device), target.to(device), router_loss, proj_lr > 0
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    moe.eval()
    return losses


def _train_loss(
    moe: HeteroMoE,
    ids: torch.Tensor,
    mask: torch.Tensor,
    target: torch.Tensor,
    router_loss: float,
    train_proj: bool,
) -> torch.Tensor:
    """Answer loss of each sequence's best expert + the router's cross-entropy towards it.

    The best expert of a sequence is the one whose own answer loss is lowest (1/PPL); only its
    projections learn from that sequence, so no expert is pulled towards another's task.
    """
    k = len(moe.bodies)
    answer = target != -100
    with torch.set_grad_enabled(train_proj):  # frozen projections: no backward through the stacks
        states = moe.expert_states(ids, mask, range(k))
    per_token = torch.stack(
        [F.cross_entropy(moe.head(states[i][answer]), target[answer], reduction="none")
         for i in range(k)],
        dim=1,
    )  # (answer tokens, K)  # fmt: skip
    with torch.no_grad():
        rows = answer.nonzero()[:, 0]
        totals = torch.zeros(ids.shape[0], k, device=ids.device).index_add_(0, rows, per_token)
        best = totals.argmin(dim=1)[rows]  # per answer token, its sequence's best expert
    loss = per_token.gather(1, best[:, None]).mean()
    scores = moe.router_logits(ids, mask)[answer] / moe.temperature
    return loss + router_loss * F.cross_entropy(scores, best)
