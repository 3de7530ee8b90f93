"""Teacher-forced scoring of a causal LM on tasks (its scores cached by ``scoring/cache.py``).

Each example is ``prompt tokens + answer tokens + EOS`` (no EOS for a task with ``eos=False``: a
continuation of running text, where exact match is "greedy decoding reproduces the answer"). One forward pass per batch gives, at every
answer position, the log-probability of the reference token and whether it is the argmax. So
exact match here is "greedy decoding from the prompt reproduces the answer and then stops", with
no generation loop (tests check it equals ``model.generate(do_sample=False)``).

Tokenisation (the prompt/answer boundary matters for BPE tokenizers): the prompt is encoded alone
with the tokenizer's special tokens (exactly what ``generate`` would be given). The answer tokens
are the tail of the joint encoding ``prompt + answer`` when that encoding starts with the prompt's
own tokens (the usual case, and the one that gives the answer the tokens the model was trained to
emit); otherwise a merge crosses the boundary (e.g. a prompt ending in a space) and the answer is
encoded on its own, without specials, and a warning is logged once. Prompts should therefore not
end in whitespace. Character-level tokenizers never hit the fallback.

Speed (Llama, Mistral and Qwen2 models): the LM head runs on the answer positions alone (a logit
may round differently from the head over every position, up to ~2e-6 in mean loglik; exact match and
token accuracy came out the same in every benchmark row), and the prompt tokens every row of an
example batch shares (a chat template's system turn, a task's instruction) run once per batch,
their keys and values given to the other rows (``prompt_prefix``: exact match and token accuracy
equal, tested; mean loglik bit for bit on most CPUs, within ~2e-8 on an AMD EPYC whose kernels round
the shared pass's float32 sums differently, so the test holds it to 1e-6). Across candidates,
shared path prefixes run once (``score_paths``, scoring/prefix.py; bit for bit).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from merge_env.errors import ConfigError
from merge_env.scoring.prefix import PathModel, PrefixCache, PrefixRun, batch_scope
from merge_env.scoring.tasks.task import METRICS, Example, Task

if TYPE_CHECKING:
    from merge_env.scoring.cache import EvalCache

logger = logging.getLogger(__name__)

# Bump when the meaning of a score changes, so old cache rows stop matching.
SCORING_VERSION = "teacher-forced-v1"

# Prompt-prefix sharing: a batch's leading tokens common to every row (a chat template's system
# turn, a task's instruction) run once when there are at least this many of them...
PROMPT_PREFIX_MIN_LEN = 4
# ... on enough copies of the first row that the pass has at least this many token rows.
PROMPT_PREFIX_MIN_TOKENS = 64


@dataclass(frozen=True)
class TaskScore:
    """Scores of one model on one task split."""

    exact_match: float  # fraction of examples whose every answer token (+EOS) is the argmax
    token_accuracy: float  # fraction of answer tokens (+EOS) that are the argmax, over all tokens
    loglik: float  # mean log-likelihood per answer token (+EOS), over all tokens
    n: int  # examples scored

    def get(self, metric: str) -> float:
        """Return the value of ``metric`` ("exact_match", "token_accuracy" or "loglik")."""
        if metric not in METRICS:
            raise ConfigError(f"unknown metric {metric!r}; expected one of {METRICS}")
        return float(getattr(self, metric))


@dataclass(frozen=True)
class ExampleScore:
    """Teacher-forced result for one example."""

    correct: bool  # every answer token (+EOS) is the argmax
    n_tokens: int  # answer tokens including EOS
    n_correct: int
    loglik: float  # sum of the answer tokens' log-probabilities


@dataclass(frozen=True)
class EncodedExample:
    """An example as token ids, and where its answer starts."""

    ids: tuple[int, ...]  # prompt + answer + EOS
    n_prompt: int


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Return a digest of what decides the token ids: vocabulary, specials, a probe's encoding."""
    probe = tokenizer("add 12+7= Hello, world!")["input_ids"]
    payload = [
        type(tokenizer).__name__,
        sorted(tokenizer.get_vocab().items()),
        tokenizer.eos_token_id,
        tokenizer.bos_token_id,
        list(probe),
    ]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


class Evaluator:
    """Scores models on tasks by teacher forcing, batched, with an optional EvalCache."""

    def __init__(
        self,
        tokenizer: Any,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        max_examples: int | None = None,
        cache: EvalCache | None = None,
        dtype: torch.dtype | None = None,
        prefix_cache_bytes: int = 256 * 2**20,
        prefix_cache: PrefixCache | None = None,
        prompt_prefix: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"evaluator: batch_size must be >= 1, got {batch_size}")
        if max_examples is not None and max_examples < 1:
            raise ConfigError(f"evaluator: max_examples must be >= 1 or None, got {max_examples}")
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"evaluator: tokenizer {type(tokenizer).__name__} has no EOS token")
        if prefix_cache_bytes < 0:
            raise ConfigError(
                f"evaluator: prefix_cache_bytes must be >= 0, got {prefix_cache_bytes}"
            )
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.max_examples = max_examples
        self.cache = cache
        self.dtype = dtype  # autocast dtype for the forward; log-probs are always float32
        self.forward_calls = 0
        # hidden states of shared path prefixes (scoring/prefix.py); None = no prefix sharing
        if prefix_cache is None and prefix_cache_bytes > 0:
            prefix_cache = PrefixCache(prefix_cache_bytes)
        self.prefix_cache = prefix_cache
        # the batch's shared prompt tokens run once, their keys/values reused by every row
        self.prompt_prefix = bool(prompt_prefix)
        # the LM head on answer positions only (Llama-like models); False: the model's own
        # forward, the head from the earliest answer on, as issue 18 found it (benchmarks)
        self.head_on_answers = True
        self._eos = int(tokenizer.eos_token_id)
        pad = tokenizer.pad_token_id
        self._pad = int(pad) if pad is not None else self._eos
        # Specials some tokenizers append to every encoding; never BOS, PAD or UNK.
        closers = (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None))
        self._specials = {int(t) for t in closers if t is not None}
        self._tok_fp = _tokenizer_fingerprint(tokenizer)
        self._memo: dict[tuple[str, str, int | None], list[EncodedExample]] = {}
        self._warned_boundary = False

    def capped(self, max_examples: int) -> Evaluator:
        """This evaluator (tokenizer, device, batch, cache, dtype) scoring at most
        ``max_examples`` per task: a problem's cheap fidelity."""
        ev = Evaluator(
            self.tokenizer, device=self.device, batch_size=self.batch_size,
            max_examples=max_examples, cache=self.cache, dtype=self.dtype,
            prefix_cache_bytes=0, prefix_cache=self.prefix_cache,
            prompt_prefix=self.prompt_prefix,
        )  # fmt: skip
        ev.head_on_answers = self.head_on_answers
        return ev

    # ------------------------------------------------------------ keys and encoding

    def cache_key(self, model_key: str, task: Task, split: str) -> str:
        """Return the cache key of (model, task split) under this evaluator's settings."""
        task.split(split)
        settings = [
            SCORING_VERSION,
            self._tok_fp,
            str(self.dtype),
            self.max_examples,
            task.fingerprint,
        ]
        digest = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:24]
        return f"{model_key}::{task.name}::{split}::{digest}"

    def _strip_trailing_specials(self, ids: list[int]) -> list[int]:
        """Drop end-of-text specials some tokenizers append (a prompt is not finished text)."""
        while ids and ids[-1] in self._specials:
            ids = ids[:-1]
        return ids

    def encode(self, examples: Sequence[Example], eos: bool = True) -> list[EncodedExample]:
        """Return each example as prompt + answer + EOS token ids (see the module docstring);
        without the EOS for ``eos=False`` (a task whose answers continue running text)."""
        tok = self.tokenizer
        p_ids = tok([ex.prompt for ex in examples], add_special_tokens=True)["input_ids"]
        j_ids = tok([ex.prompt + ex.answer for ex in examples], add_special_tokens=True)[
            "input_ids"
        ]
        out: list[EncodedExample] = []
        for ex, p, j in zip(examples, p_ids, j_ids):
            p = self._strip_trailing_specials(list(p))
            j = self._strip_trailing_specials(list(j))
            if not p:
                raise ConfigError(f"evaluator: prompt {ex.prompt!r} encodes to no tokens")
            if j[: len(p)] == p:
                answer = j[len(p) :]
            else:
                if not self._warned_boundary:
                    logger.warning(
                        "a token crosses the prompt/answer boundary (prompt %r); encoding "
                        "answers separately where this happens",
                        ex.prompt[-20:],
                    )
                    self._warned_boundary = True
                answer = list(tok(ex.answer, add_special_tokens=False)["input_ids"])
            if not answer and not eos:
                raise ConfigError(f"evaluator: answer {ex.answer!r} encodes to no tokens")
            out.append(EncodedExample(tuple(p + answer + ([self._eos] if eos else [])), len(p)))
        return out

    def _encoded_split(self, task: Task, split: str) -> list[EncodedExample]:
        """Return the (memoised) encoding of the first ``max_examples`` examples of a split."""
        key = (task.fingerprint, split, self.max_examples)
        if key not in self._memo:
            examples = task.split(split)[: self.max_examples]
            if not examples:
                raise ConfigError(f"task {task.name!r}: split {split!r} has no examples")
            self._memo[key] = self.encode(examples, eos=task.eos)
        return self._memo[key]

    # ------------------------------------------------------------ the forward loop

    def _batches(
        self, encoded: Sequence[EncodedExample]
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Yield (example indices, input_ids, attention_mask), right-padded, longest first."""
        order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = len(encoded[idx[0]].ids) - 1  # the final EOS is a target, never an input
            inputs = torch.full((len(idx), width), self._pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids = encoded[i].ids[:-1]
                inputs[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                mask[row, : len(ids)] = 1
            yield idx, inputs, mask

    def padded_batches(
        self, tasks: Sequence[Task], split: str = "search"
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Return the (input_ids, attention_mask) batches that scoring ``tasks`` feeds the model."""
        encoded = [e for t in tasks for e in self._encoded_split(t, split)]
        return [(inp, mask) for _, inp, mask in self._batches(encoded)]

    def _check_device(self, model: Any) -> None:
        """Raise ConfigError if the model's parameters live on another device."""
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        if param is None:
            return
        dev = param.device
        if dev.type != self.device.type or (
            self.device.index is not None and dev.index != self.device.index
        ):
            raise ConfigError(
                f"evaluator runs on {self.device} but the model is on {dev}; "
                f"call model.to({str(self.device)!r}) first"
            )

    def _forward_kwargs(self, model: Any) -> set[str]:
        """Return which optional keywords the model's forward takes (use_cache, logits_to_keep)."""
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError, AttributeError):
            return set()
        return {k for k in ("use_cache", "logits_to_keep") if k in params}

    def _split(self, model: Any) -> tuple[Any, Any] | None:
        """(decoder, head) when the head runs on answer positions only, else None."""
        return _decoder_and_head(model) if self.head_on_answers else None

    def _can_share(self, model: Any) -> bool:
        """Whether the model's prompt prefix may run once: split, its decoder takes a cache."""
        split = self._split(model)
        return split is not None and _cache_kw(split[0]) is not None

    def _autocast(self) -> contextlib.AbstractContextManager:
        """Autocast to the evaluator's dtype, or nothing for float32."""
        return (
            torch.autocast(self.device.type, dtype=self.dtype)
            if self.dtype not in (None, torch.float32)
            else contextlib.nullcontext()
        )

    def _run(self, model: Any, encoded: Sequence[EncodedExample]) -> np.ndarray:
        """Return per-example rows (n_tokens, n_correct, loglik_sum) from batched forwards."""
        self._check_device(model)
        stats = np.zeros((len(encoded), 3), dtype=np.float64)
        accepts = self._forward_kwargs(model)
        can_share = self._can_share(model)
        autocast = self._autocast()
        was_training = bool(getattr(model, "training", False))
        if hasattr(model, "eval"):
            model.eval()  # dropout would make scores random
        try:
            with torch.inference_mode(), autocast:
                for idx, inputs, mask in self._batches(encoded):
                    batch = [encoded[i] for i in idx]
                    shared = self.shared_prompt(batch) if can_share else 0
                    stats[idx] = self._score_batch(model, batch, inputs, mask, accepts,
                                                   shared=shared)  # fmt: skip
        finally:
            if was_training:
                model.train()
        return stats

    def shared_prompt(self, batch: Sequence[EncodedExample]) -> int:
        """How many leading tokens every row of the batch shares and the prompt-prefix pass runs
        once (0: none, too few, or prompt-prefix sharing off). Never an answer position's input."""
        if not self.prompt_prefix or len(batch) < 2:
            return 0
        if len({len(enc.ids) for enc in batch}) == 1:
            # unpadded: the plain forward drops the mask for causal attention, whose kernel a
            # pass after cached keys cannot use, and rounds differently
            return 0
        first, limit = batch[0].ids, min(enc.n_prompt for enc in batch) - 1
        n = 0
        while n < limit and all(enc.ids[n] == first[n] for enc in batch[1:]):
            n += 1
        width = max(len(enc.ids) for enc in batch) - 1
        if len(batch) * (width - n) < PROMPT_PREFIX_MIN_TOKENS:
            return 0  # a pass of a few token rows: CPU BLAS would pick another kernel
        return n if n >= PROMPT_PREFIX_MIN_LEN else 0

    def _prompt_state(
        self, model: Any, inputs: torch.Tensor, mask: torch.Tensor, n: int
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer, the keys and values of the batch's ``n`` shared tokens (one row).

        The pass runs the first row at the batch's full width, the tokens after the prefix masked
        out as padding (the batch is padded, so its attention takes an explicit mask too), on
        enough copies for at least ``PROMPT_PREFIX_MIN_TOKENS`` token rows, so its arithmetic,
        and so each key and value, is the batch forward's own (CPU BLAS switches kernels, and
        rounding, for matmuls of a few rows only; measured on CPU, not on GPUs).
        """
        from transformers.cache_utils import DynamicCache

        decoder = model.get_decoder()
        width = inputs.shape[1]
        rows = min(inputs.shape[0], -(-PROMPT_PREFIX_MIN_TOKENS // width))
        ids = inputs[:1].expand(rows, width)
        own = torch.ones((rows, width), dtype=mask.dtype, device=mask.device)
        own[:, n:] = 0  # padded, as the batch is (shared_prompt)
        cache = DynamicCache()
        decoder(input_ids=ids, attention_mask=own, use_cache=True, **{_cache_kw(decoder): cache})
        if hasattr(cache, "layers"):  # transformers >= 4.56
            kv = [(layer.keys, layer.values) for layer in cache.layers]
        else:
            kv = list(zip(cache.key_cache, cache.value_cache))
        return [(k[:1, :, :n], v[:1, :, :n]) for k, v in kv]

    def _suffix_hidden(
        self,
        decoder: Any,
        prompt: list[tuple[torch.Tensor, torch.Tensor]],
        inputs: torch.Tensor,
        mask: torch.Tensor,
        n: int,
    ) -> torch.Tensor:
        """The decoder's hidden states at positions ``n`` onwards, the first ``n`` tokens' keys
        and values given (``_prompt_state``) instead of computed again for every row."""
        from transformers.cache_utils import DynamicCache

        rows = inputs.shape[0]
        past = DynamicCache()
        for i, (k, v) in enumerate(prompt):
            past.update(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1), i)
        kw = {_cache_kw(decoder): past}
        out = decoder(input_ids=inputs[:, n:], attention_mask=mask, use_cache=True, **kw)
        return out[0]

    def _score_batch(
        self,
        model: Any,
        batch: list[EncodedExample],
        inputs: torch.Tensor,
        mask: torch.Tensor,
        accepts: set[str],
        *,
        shared: int = 0,
        whole: Any = None,
    ) -> np.ndarray:
        """Return (n_tokens, n_correct, loglik_sum) rows for one right-padded batch.

        ``shared`` (from ``shared_prompt``): the leading tokens every row shares, run once by
        ``whole`` (the candidate's whole model; default ``model``) and skipped by ``model``'s
        own pass, which may be a prefix-shared model starting from a replayed state.
        """
        width = inputs.shape[1]
        rows, cols, targets = [], [], []
        for r, enc in enumerate(batch):
            span = range(enc.n_prompt - 1, len(enc.ids) - 1)  # position t predicts token t + 1
            rows.extend([r] * len(span))
            cols.extend(span)
            targets.extend(enc.ids[enc.n_prompt :])
        row_t = torch.tensor(rows, device=self.device)
        col_t = torch.tensor(cols, device=self.device)
        tgt_t = torch.tensor(targets, device=self.device)
        inputs, mask = inputs.to(self.device), mask.to(self.device)
        split = self._split(model)
        if split is not None:
            # The head runs on the answer positions only: a vocabulary row per answer token, not
            # per position of every row from the earliest answer on (SmolLM2: 49k words). The
            # matmul over other rows may round a logit differently (SmolLM2 merges, CPU: mean
            # loglik within 2e-6, exact match and token accuracy the same), an ulp below what
            # SCORING_VERSION guards (the meaning of a score), so it is not bumped.
            decoder, head = split
            if shared:
                prompt = self._prompt_state(model if whole is None else whole, inputs, mask, shared)
                hidden = self._suffix_hidden(decoder, prompt, inputs, mask, shared)
                sel = head(hidden[row_t, col_t - shared]).float()
            else:
                hidden = decoder(input_ids=inputs, attention_mask=mask, use_cache=False)[0]
                sel = head(hidden[row_t, col_t]).float()
        else:
            kwargs: dict[str, Any] = {}
            if "use_cache" in accepts:
                kwargs["use_cache"] = False
            if "logits_to_keep" in accepts:
                # The head only runs on positions from the earliest answer start onwards.
                kwargs["logits_to_keep"] = width - min(enc.n_prompt - 1 for enc in batch)
            out = model(input_ids=inputs, attention_mask=mask, **kwargs)
            logits = out.logits if hasattr(out, "logits") else out
            if isinstance(logits, tuple):
                logits = logits[0]
            # Gather the answer positions first: log_softmax over the vocab only where needed.
            sel = logits[row_t, col_t - (width - logits.shape[1])].float()
        self.forward_calls += 1
        logp = sel.gather(1, tgt_t[:, None]).squeeze(1) - torch.logsumexp(sel, dim=-1)
        hit = (sel.argmax(dim=-1) == tgt_t).double()
        per = torch.zeros(len(batch), 3, dtype=torch.float64, device=self.device)
        per[:, 0].index_add_(0, row_t, torch.ones_like(hit))
        per[:, 1].index_add_(0, row_t, hit)
        per[:, 2].index_add_(0, row_t, logp.double())
        return per.cpu().numpy()

    # ------------------------------------------------------------ public scoring

    def example_scores(
        self, model: Any, examples: Sequence[Example], eos: bool = True
    ) -> list[ExampleScore]:
        """Return the per-example teacher-forced results (no cache); ``eos=False`` scores the
        answers without the end token (as ``encode``; pass the examples' task's ``eos``)."""
        if not examples:
            return []
        return _example_results(self._run(model, self.encode(examples, eos=eos)))

    def task_examples(
        self, model: Any, tasks: Sequence[Task], split: str = "search"
    ) -> dict[str, list[ExampleScore]]:
        """Return {task name: per-example results on ``split``} (uncached), from the very sweep
        ``score_tasks`` runs, so their exact match is ``score_tasks``' bit for bit."""
        _check_names(tasks)
        encoded, spans = self._encoded_tasks(tasks, split)
        stats = self._run(model, encoded)
        return {task.name: _example_results(stats[a:b]) for task, (a, b) in zip(tasks, spans)}

    def score(
        self, model: Any, task: Task, split: str = "search", *, model_key: str | None = None
    ) -> TaskScore:
        """Return the model's score on a task split; cached under ``model_key`` when given."""
        return self.score_tasks(model, [task], split, model_key=model_key)[task.name]

    def score_tasks(
        self,
        model: Any,
        tasks: Sequence[Task],
        split: str = "search",
        *,
        model_key: str | None = None,
    ) -> dict[str, TaskScore]:
        """Return {task name: score}; cache misses are scored together in one batched sweep."""
        names = _check_names(tasks)
        use_cache = self.cache is not None and model_key is not None
        done: dict[str, TaskScore] = {}
        pending: list[tuple[Task, str | None]] = []
        for task in tasks:
            key = self.cache_key(model_key, task, split) if use_cache else None  # type: ignore[arg-type]
            hit = self.cache.get(key) if key is not None else None  # type: ignore[union-attr]
            if hit is not None:
                done[task.name] = hit
            else:
                pending.append((task, key))
        if pending:
            encoded, spans = self._encoded_tasks([task for task, _ in pending], split)
            stats = self._run(model, encoded)
            for (task, key), (a, b) in zip(pending, spans):
                score = _aggregate(stats[a:b])
                if key is not None:
                    self.cache.put(key, score)  # type: ignore[union-attr]
                done[task.name] = score
        return {name: done[name] for name in names}

    def score_paths(
        self, paths: Sequence[PathModel], tasks: Sequence[Task], split: str = "search"
    ) -> list[dict[str, TaskScore]]:
        """Return {task name: score} per candidate (uncached), each shared path prefix run once.

        Every score equals, bit for bit, ``score_tasks`` on the candidate's own assembled model:
        a candidate only skips the slots whose output it would have computed identically (see
        scoring/prefix.py). Without a prefix cache each candidate runs its whole path.
        """
        _check_names(tasks)
        encoded, spans = self._encoded_tasks(tasks, split)
        stats = [np.zeros((len(encoded), 3), dtype=np.float64) for _ in paths]
        if self.prefix_cache is None:
            for i, path in enumerate(paths):
                stats[i] = self._run(path.build(list(path.slots), list(range(len(path.slots)))),
                                     encoded)  # fmt: skip
        elif paths:
            self._run_shared(paths, encoded, stats)
        return [{t.name: _aggregate(s[a:b]) for t, (a, b) in zip(tasks, spans)} for s in stats]

    def _run_shared(
        self, paths: Sequence[PathModel], encoded: Sequence[EncodedExample], stats: list[np.ndarray]
    ) -> None:
        """Fill each candidate's per-example rows, batch by batch, candidates in trie order."""
        assert self.prefix_cache is not None
        order = PrefixRun.trie_order(paths)
        accepts: dict[type, set[str]] = {}  # per model class: a signature costs more than a slot
        shares: dict[type, bool] = {}  # per model class: whether its prompt prefix may run once
        wholes: dict[int, Any] = {}  # per candidate: its whole model, for the prompt pass
        with torch.inference_mode(), self._autocast():
            for b, (idx, inputs, mask) in enumerate(self._batches(encoded)):
                batch = [encoded[i] for i in idx]
                # replayed states cover the positions after the shared prompt only: its length
                # is part of the states' scope
                shared = self.shared_prompt(batch)
                settings = (str(self.device), str(self.dtype), shared, self.head_on_answers)
                run = PrefixRun(paths, self.prefix_cache, batch_scope(inputs, mask, settings))
                for i in order:
                    model = run.model_for(paths[i])
                    if b == 0:
                        self._check_device(model)
                    if type(model) not in accepts:
                        accepts[type(model)] = self._forward_kwargs(model)
                        shares[type(model)] = self._can_share(model)
                    kw, whole = accepts[type(model)], None
                    if shared and shares[type(model)]:
                        if i not in wholes:  # built once, whatever the batch
                            slots = list(paths[i].slots)
                            wholes[i] = paths[i].build(slots, list(range(len(slots))))
                        whole = wholes[i]
                    stats[i][idx] = self._score_batch(model, batch, inputs, mask, kw,
                                                      shared=shared if whole is not None else 0,
                                                      whole=whole)  # fmt: skip
                    run.finish()

    def _encoded_tasks(
        self, tasks: Sequence[Task], split: str
    ) -> tuple[list[EncodedExample], list[tuple[int, int]]]:
        """Return the tasks' encoded examples end to end, and each task's (start, stop) span."""
        encoded: list[EncodedExample] = []
        spans = []
        for task in tasks:
            part = self._encoded_split(task, split)
            spans.append((len(encoded), len(encoded) + len(part)))
            encoded.extend(part)
        return encoded, spans


# Causal-LM families whose forward is exactly ``lm_head(decoder(...)[0])`` (no logit scaling or
# soft-capping between them), so the head may run on chosen positions alone.
PLAIN_HEAD_TYPES = frozenset({"llama", "mistral", "qwen2"})


def _decoder_and_head(model: Any) -> tuple[Any, Any] | None:
    """(decoder, LM head) of a Hugging Face causal LM of a ``PLAIN_HEAD_TYPES`` family, or None
    (any other model is scored through its own forward)."""
    config = getattr(model, "config", None)
    if getattr(config, "model_type", None) not in PLAIN_HEAD_TYPES:
        return None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    return (decoder, head) if decoder is not None and head is not None else None


def _cache_kw(decoder: Any) -> str | None:
    """The keyword a decoder's forward takes its KV cache by (``cache`` since transformers 5.2x,
    ``past_key_values`` before), or None if it names neither."""
    try:
        params = inspect.signature(decoder.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def _check_names(tasks: Sequence[Task]) -> list[str]:
    """The tasks' names; ConfigError when one repeats (scores are keyed by name)."""
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluator: task names repeat in {names}")
    return names


def _example_results(stats: np.ndarray) -> list[ExampleScore]:
    """Per-example results from (n_tokens, n_correct, loglik_sum) rows."""
    return [ExampleScore(bool(t == c), int(t), int(c), float(ll)) for t, c, ll in stats]


def aggregate(examples: Sequence[ExampleScore]) -> TaskScore:
    """The TaskScore of per-example results (``task_examples``'), equal to ``score_tasks``' bit
    for bit."""
    rows = [[e.n_tokens, e.n_correct, e.loglik] for e in examples]
    return _aggregate(np.array(rows, dtype=np.float64).reshape(-1, 3))


def metric_of_rows(rows: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of per-example (n_tokens, n_correct, loglik_sum) rows, over their last-but-one
    axis: (n, 3) rows give one value, (R, n, 3) one per leading index (a bootstrap's resamples).
    Exact match is per example, token accuracy and loglik per token (over all tokens)."""
    n_tok, n_cor, ll = rows[..., 0], rows[..., 1], rows[..., 2]
    if metric == "exact_match":
        return (n_cor == n_tok).mean(-1)
    if metric == "token_accuracy":
        return n_cor.sum(-1) / n_tok.sum(-1)
    if metric == "loglik":
        return ll.sum(-1) / n_tok.sum(-1)
    raise ConfigError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _aggregate(stats: np.ndarray) -> TaskScore:
    """Return a TaskScore from per-example (n_tokens, n_correct, loglik_sum) rows."""
    values = {m: float(metric_of_rows(stats, m)) for m in METRICS}
    return TaskScore(**values, n=int(len(stats)))
