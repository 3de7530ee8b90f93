"""The one fine-tuning loop every pool trains with (the zoo's checkpoints, SmolLM2's experts).

Rows are encoded exactly as the Evaluator scores them (prompt + answer + EOS), with the loss on the
answer and EOS only (an instruction fine-tune's masking, the default) or on the whole text (a
language model of the domain, as continued pretraining trains one), so a model is trained on the
tokens it is scored on. The loop is AdamW with
gradient clipping over seeded batches; what differs between pools is passed in: how a batch is
drawn (one task, or a mixture of tasks), the learning-rate schedule, the loss and hooks per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from merge_env.errors import ConfigError
from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.tasks.task import Example

IGNORE = -100  # label id the loss skips
LOSS_ON = ("answer", "text")  # which tokens of a row carry the loss

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # ids, attention mask, labels
Batches = Callable[[torch.Generator], Batch]


@dataclass(frozen=True)
class TrainRows:
    """Encoded training examples: right-padded ids, attention mask, labels (answer + EOS, or the
    whole text)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


def encode_rows(
    tokenizer: Any, examples: Sequence[Example], width: int | None = None, loss_on: str = "answer"
) -> TrainRows:
    """Examples encoded exactly as the Evaluator scores them: prompt + answer + EOS, padded to
    ``width`` (default: the longest); ConfigError for an example longer than ``width``.
    ``loss_on``: "answer" (answer + EOS carry the loss) or "text" (every token after the first)."""
    encoded = Evaluator(tokenizer).encode(examples)
    width = max(len(e.ids) for e in encoded) if width is None else width
    return _padded(tokenizer, examples, encoded, width, loss_on)


def encode_groups(tokenizer: Any, groups: Sequence[Sequence[Example]]) -> list[TrainRows]:
    """Each group as ``encode_rows`` encodes it, all padded to the longest example of any group
    (rows mixed into one batch share a width); every example is encoded once."""
    encoded = [Evaluator(tokenizer).encode(g) for g in groups]
    width = max(len(e.ids) for enc in encoded for e in enc)
    return [_padded(tokenizer, g, enc, width) for g, enc in zip(groups, encoded)]


def _padded(
    tokenizer: Any,
    examples: Sequence[Example],
    encoded: Sequence[Any],
    width: int,
    loss_on: str = "answer",
) -> TrainRows:
    """The encoded ``examples`` right-padded to ``width``, labels on the answer + EOS (or, with
    ``loss_on="text"``, on every real token: the first is never predicted, as nothing precedes it)."""
    if loss_on not in LOSS_ON:
        raise ConfigError(f"fine-tune: loss_on must be one of {LOSS_ON}, got {loss_on!r}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), int(pad), dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, enc in enumerate(encoded):
        if len(enc.ids) > width:
            raise ConfigError(
                f"fine-tune: example {examples[i].prompt!r} is longer than {width} tokens"
            )
        row = torch.tensor(enc.ids, dtype=torch.long)
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        start = enc.n_prompt if loss_on == "answer" else 0
        labels[i, start : len(row)] = row[start:]
    return TrainRows(ids, mask, labels)


# ---------------------------------------------------------------- batches


def _trim(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Batch:
    """The rows cut to the longest one (padding past it costs compute and changes nothing)."""
    width = int(mask.sum(1).max())
    return ids[:, :width], mask[:, :width], labels[:, :width]


def uniform_batches(rows: TrainRows, size: int) -> Batches:
    """Batches of ``size`` rows drawn uniformly with replacement."""
    if size < 1:
        raise ConfigError(f"fine-tune: batch_size ({size}) must be >= 1")

    def draw(gen: torch.Generator) -> Batch:
        idx = torch.randint(len(rows.ids), (size,), generator=gen)
        return _trim(rows.ids[idx], rows.mask[idx], rows.labels[idx])

    return draw


def mixture_batches(pools: Sequence[TrainRows], mix: Sequence[float], size: int) -> Batches:
    """Batches of ``size`` rows, each row's task drawn by its weight in ``mix``."""
    weights = torch.tensor([float(w) for w in mix])

    def draw(gen: torch.Generator) -> Batch:
        picks = torch.multinomial(weights, size, True, generator=gen)
        counts = torch.bincount(picks, minlength=len(pools))
        parts = []
        for pool, c in zip(pools, counts.tolist()):
            if c:
                idx = torch.randint(len(pool.ids), (c,), generator=gen)
                parts.append((pool.ids[idx], pool.mask[idx], pool.labels[idx]))
        ids, mask, labels = (torch.cat(p) for p in zip(*parts))
        return _trim(ids, mask, labels)

    return draw


# ---------------------------------------------------------------- schedule and losses


def warmup_cosine(lr: float, steps: int, warmup: int, floor: float = 0.0) -> Callable[[int], float]:
    """The learning rate per step: linear warm-up, then cosine decay to ``floor`` x the peak.

    Each form is written in the order of operations its pools were trained with (floor 0:
    SmolLM2's experts; the zoo's 0.1), so cached pools stay bit-identical.
    """

    def at(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, warmup))
        if floor == 0.0:
            return lr * warm * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        return lr * (
            warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * step / steps)))
        )

    return at


def lm_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """The model's own causal-LM loss (mean cross-entropy of the labelled tokens)."""
    return model(input_ids=ids, attention_mask=mask, labels=labels).loss


def answer_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """The mean cross-entropy of the labelled tokens, the head run on those positions only.

    With a large vocabulary (SmolLM2's 49k words) the LM head on every prompt position costs
    several times the rest of a small model; the value equals ``lm_loss``'s.
    """
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)[0]
    targets = labels[:, 1:]
    where = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits.float(), targets[where])


# ---------------------------------------------------------------- the loop


def bar_ticker(bar: Any) -> Callable[[int, float], None]:
    """A fine-tune's ``on_step`` that advances a tqdm ``bar`` one step and shows the loss."""

    def tick(step: int, loss: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    return tick


def finetune(
    model: Any,
    batches: Batches,
    lr_at: Callable[[int], float],
    *,
    steps: int,
    seed: int,
    loss_fn: Callable[..., Any] = lm_loss,
    fused: bool = False,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Full fine-tune with AdamW (betas 0.9/0.98, no weight decay, gradients clipped at 1) on
    batches drawn from a generator seeded with ``seed``; returns the loss per step.

    ``fused``: PyTorch's fused AdamW step (on a busy CPU the default multi-tensor step over 135M
    parameters costs as much as the forward). ``on_step(step, loss)`` runs after each step.
    """
    if steps < 1:
        raise ConfigError(f"fine-tune: steps ({steps}) must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    options = {"fused": True} if fused else {}
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr_at(0), betas=(0.9, 0.98), weight_decay=0.0, **options
    )
    losses: list[float] = []
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        ids, mask, labels = (t.to(device) for t in batches(gen))
        loss = loss_fn(model, ids, mask, labels)
        if not torch.isfinite(loss):
            raise ConfigError(f"fine-tune: loss is {loss.item()} at step {step}; lower the lr")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1])
    model.eval()
    return losses


# ---------------------------------------------------------------- LoRA


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraSpec:
    """Low-rank adapters (Hu et al. 2021) on the decoder layers' linear maps: W + (alpha / rank)
    B A, A (rank x in) Gaussian / sqrt(in), B (out x rank) zero, so training starts at W."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = LORA_TARGETS

    def __post_init__(self) -> None:
        if self.rank < 1 or self.alpha <= 0:
            raise ConfigError(f"lora: rank >= 1 and alpha > 0, got {self.rank}, {self.alpha}")


class LoraLinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update."""

    def __init__(self, linear: nn.Linear, spec: LoraSpec, generator: torch.Generator) -> None:
        super().__init__()
        self.linear = linear
        self.scale = spec.alpha / spec.rank
        w = linear.weight
        a = torch.randn(spec.rank, linear.in_features, generator=generator) / math.sqrt(
            linear.in_features
        )
        self.lora_a = nn.Parameter(a.to(device=w.device, dtype=w.dtype))
        self.lora_b = nn.Parameter(torch.zeros(linear.out_features, spec.rank, device=w.device,
                                               dtype=w.dtype))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale


@contextmanager
def lora_adapters(model: Any, spec: LoraSpec, seed: int) -> Iterator[list[LoraLinear]]:
    """Train ``model`` through adapters: inside, only the adapters require grad; on a normal exit
    each update is merged into its weight (W += scale B A) and the model is plain again, every
    parameter as trainable as before, so it saves as an ordinary checkpoint (a LoRA "merged into
    the weights"). On an exception the original layers come back unchanged (nothing merged).
    A linear layer shared by two modules would get its update twice: none is in these families.
    """
    targets = [
        (module, name, child)
        for module in model.modules()
        for name, child in module.named_children()
        if name in spec.targets and isinstance(child, nn.Linear)
    ]
    if not targets:
        raise ConfigError(f"lora: no linear layer named any of {spec.targets} in the model")
    gen = torch.Generator().manual_seed(seed)
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    wrapped: list[tuple[nn.Module, str, LoraLinear]] = []
    merge = False
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for module, name, child in targets:
            adapter = LoraLinear(child, spec, gen)
            setattr(module, name, adapter)
            wrapped.append((module, name, adapter))
        yield [adapter for _, _, adapter in wrapped]
        merge = True
    finally:
        with torch.no_grad():
            for module, name, adapter in wrapped:
                if merge:
                    adapter.linear.weight += adapter.scale * (adapter.lora_b @ adapter.lora_a)
                setattr(module, name, adapter.linear)
        for name, p in model.named_parameters():
            p.requires_grad_(trainable.get(name, True))
