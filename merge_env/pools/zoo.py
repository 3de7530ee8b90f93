"""The default model zoo: a char-level Llama base, one expert per task, a recycling pool, an odd expert.

No hub is reachable, so the project trains its own pool (DESIGN.md §2). A small ``LlamaForCausalLM``
learns a mixture of the synthetic zoo tasks (the base); each expert fine-tunes the base gently on its
own task with the base's mixture replayed beside it, so it gains there and loses some of the rest
(the trade-off merging must resolve). The recycling pool (Khalifa et al. 2024, "If You Can't Use
Them, Recycle Them") is checkpoints of one architecture from different stages, data mixtures and
learning rates: snapshots of the base run and short branches from them. The odd expert has another
width, for heterogeneous MoE (MergeME).

Training sequences are exactly what the Evaluator scores: ``<s> prompt answer </s>``, with the loss
on the answer and EOS only (random prompt digits are noise a model cannot learn), or, with
``loss_on="text"``, on the whole sequence: language models of their domains, whose perplexity on a
prompt says which domain it is from (what MergeME's perplexity routing assumes). Everything is
seeded; a build goes to a temporary folder renamed into ``<cache>/zoo-<fingerprint>`` when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools.cache import (
    build_atomically,
    core_checkpoints,
    core_digest,
    default_cache_dir,
    pinned_threads,
    read_manifest,
    recorded_machine,
    recorded_threads,
    require_checkpoints,
    sub_seed,
    task_records,
    tasks_from_records,
    train_threads,
    warn_other_thread_count,
)
from merge_env.pools.finetune import (
    LOSS_ON,
    LoraSpec,
    encode_rows,
    finetune,
    lora_adapters,
    mixture_batches,
    warmup_cosine,
)
from merge_env.pools.shipped import INSTALLED_KEY, install, shipped_entry
from merge_env.scoring.tasks.synthetic import (
    DEFAULT_ZOO_TASKS,
    V5_ZOO_TASKS,
    ZOO_TASK_KINDS,
    char_tokenizer,
    check_rare_symbols,
    make_task,
)
from merge_env.scoring.tasks.task import Task

logger = logging.getLogger(__name__)

# Bump when training code changes what a config builds, so stale cached zoos stop matching.
ZOO_VERSION = 4  # 4: per-task rare mass and expert lr; add's rare digits 7-9
# (zoo v5 changed settings only, which the fingerprint holds: the training code is v4's)
MANIFEST = "zoo.json"
# The recycling pool and the odd expert: trained on first request (build_zoo(extras=True)), into
# this subfolder of the zoo, since the main job and the agents never load them.
EXTRAS = "extras"
EXTRAS_MANIFEST = "extras.json"


@dataclass(frozen=True)
class ModelShape:
    """Sizes of one LlamaForCausalLM."""

    hidden: int = 128
    layers: int = 4
    heads: int = 4
    kv_heads: int = 4
    intermediate: int = 256
    max_positions: int = 64


@dataclass(frozen=True)
class RecycleSpec:
    """One recycling checkpoint: a base-run snapshot, optionally trained further on a mixture.

    A branch restarts AdamW with the fine-tuning loop's warm-up and cosine decay to 10% of ``lr``, so it
    ends annealed, like the base run; a bare snapshot (``steps=0``) with ``start < 1`` holds the
    run's weights mid-schedule, before the anneal.
    """

    name: str
    start: float  # fraction of the base run at which the branch starts (1.0 = the final base)
    steps: int = 0  # 0: the snapshot itself
    mix: tuple[float, ...] = ()  # task weights, aligned with ZooConfig.tasks
    lr: float = 1e-3


# One trajectory family, as the leftovers Khalifa et al. 2024 recycle: short fine-tunes of the base
# run (five from its final weights, one from its 90% stage) that vary the data mixture and the
# learning rate (1.5e-3 to 3e-3, at most the base run's peak), and the run's bare 80% snapshot
# (taken mid-schedule, before the anneal, so weak alone: a leftover a blind uniform merge pays for).
# Every mixture keeps every task (a zero share forgets that task outright, so such a checkpoint
# is no generalist), and every branch has the same length (else the longest simply dominates).
# Branches from one base stay linearly connected: on the search split the uniform merge of the five
# final-base branches scores at least as well as the best of them, and the lines between the pairs
# tried show no barrier. Mixtures are aligned with the tasks, (add, atbash, cipher) in zoo v6 and
# (add, reverse, cipher) in v5, where they were chosen; cipher is half or more of each, as add
# barely moves in 80 steps at any share and cipher is where a branch gains most, so the branches
# differ in which of add and the second task they trade for it ("reverse_mix_hot" weights the
# second task, atbash in v6: the names are kept so that v5's zoos keep their fingerprints).
DEFAULT_RECYCLING: tuple[RecycleSpec, ...] = (
    RecycleSpec("stage80", start=0.8),
    RecycleSpec("cipher_mix", start=1.0, steps=80, mix=(0.2, 0.2, 0.6), lr=2e-3),
    RecycleSpec("add_mix", start=1.0, steps=80, mix=(0.35, 0.15, 0.5), lr=2e-3),
    RecycleSpec("reverse_mix_hot", start=1.0, steps=80, mix=(0.15, 0.35, 0.5), lr=3e-3),
    RecycleSpec("cipher_mix_hot", start=1.0, steps=80, mix=(0.2, 0.2, 0.6), lr=3e-3),
    RecycleSpec("broad_mix_cool", start=1.0, steps=80, mix=(0.25, 0.25, 0.5), lr=1.5e-3),
    RecycleSpec("stage90_cipher_mix", start=0.9, steps=80, mix=(0.2, 0.2, 0.6), lr=2e-3),
)


# Settings added after zoos were cached, at the value those zoos were built with: left out of the
# fingerprint and the manifest there, so the zoos keep their fingerprints and older checkouts
# still read new manifests (session 46: the loss on the whole text)
_BEFORE_THEIR_KEY: dict[str, Any] = {"loss_on": "answer"}


@dataclass(frozen=True)
class ZooConfig:
    """Every size, step count and learning rate of a zoo; ``preset`` gives the named ones."""

    # zoo v6 (session 41): add, atbash, cipher; v5's settings with atbash in reverse's place,
    # which holds the regime on 29 of 30 builds over two CPU families where v5 holds on 12 of 24
    # of the same builds (docs/zoo.md: "Zoo v6"; results/zoo_v6/)
    tasks: tuple[str, ...] = DEFAULT_ZOO_TASKS
    n_search: int = 96
    n_test: int = 192
    task_seed: int = 0  # the evaluation splits; kept apart from ``seed`` so zoo seeds compare
    train_pool: int = 6000  # distinct training examples per task (never in search or test)
    shape: ModelShape = ModelShape()
    batch_size: int = 64
    warmup: int = 30
    base_steps: int = 1000
    base_lr: float = 3e-3
    base_mix: tuple[float, ...] = (0.5, 0.25, 0.25)
    # the share of each task's rare symbols in the base's pretraining data (uniform: None); one
    # value for every task, or one per task (aligned with tasks)
    base_rare_mass: float | tuple[float, ...] | None = (0.01, 0.01, 0.002)
    # each task's rare symbols (aligned with tasks); None: the tasks' own (RARE_SYMBOLS: digits
    # 7-9, letters n-z, N-Z)
    rare_symbols: tuple[str, ...] | None = None
    # Zoo v5 (session 19): 900 steps at replay 0.8 see as much of the task's own data as v4's 600
    # at 0.7 (180 batches' worth) with more of the base's mixture around it; on this project's
    # machine the best plain merge keeps >= 50 % of every gain on 5 of 6 training seeds (v4: 3 of
    # 6), at 1.5x v4's expert training time (docs/zoo.md: "The regime (zoo v5) and why")
    expert_steps: tuple[int, ...] = (900, 900, 900)  # aligned with tasks
    expert_lr: float | tuple[float, ...] = 6e-4  # one for every expert, or one per task
    # share of each expert's batches replaying the base's pretraining mixture
    expert_replay: float = 0.8
    recycling: tuple[RecycleSpec, ...] = DEFAULT_RECYCLING
    odd_task: str = "cipher"
    odd_shape: ModelShape = ModelShape(hidden=96, intermediate=192)
    odd_steps: int = 240
    odd_lr: float = 3e-3
    # which tokens carry every model's training loss: "answer" (answer + EOS, an instruction
    # fine-tune's masking) or "text" (the whole sequence, prompt included: each model a language
    # model of its data, as continued pretraining on a domain makes one). Session 46: whole-text
    # zoos, where MergeME's perplexity routing has a prompt signal to route on (docs/zoo.md)
    loss_on: str = "answer"
    seed: int = 0

    def __post_init__(self) -> None:
        k = len(self.tasks)
        unknown = [t for t in self.tasks if t not in ZOO_TASK_KINDS]
        if unknown or len(set(self.tasks)) != k or k == 0:
            raise ConfigError(f"zoo.tasks: {self.tasks} must be distinct kinds of {ZOO_TASK_KINDS}")
        if len(self.base_mix) != k or len(self.expert_steps) != k:
            raise ConfigError(
                f"zoo.base_mix and zoo.expert_steps need one entry per task {self.tasks}"
            )
        if self.odd_task not in self.tasks:
            raise ConfigError(f"zoo.odd_task: {self.odd_task!r} is not one of {self.tasks}")
        if len(self.recycling) < 2 or len({r.name for r in self.recycling}) != len(self.recycling):
            raise ConfigError("zoo.recycling: needs at least 2 checkpoints with distinct names")
        for r in self.recycling:
            if not 0.0 < r.start <= 1.0 or (r.steps > 0 and len(r.mix) != k):
                raise ConfigError(f"zoo.recycling[{r.name!r}]: start in (0, 1], mix of length {k}")
        if not 0.0 <= self.expert_replay < 1.0:
            raise ConfigError(f"zoo.expert_replay: must be in [0, 1), got {self.expert_replay}")
        if self.base_rare_mass is not None:
            masses = self.per_task("base_rare_mass")
            if not all(0.0 <= m <= 1.0 for m in masses):
                raise ConfigError(
                    f"zoo.base_rare_mass: must be in [0, 1], got {self.base_rare_mass}"
                )
        if self.rare_symbols is not None:
            if self.base_rare_mass is None:
                raise ConfigError(
                    "zoo.rare_symbols: only with zoo.base_rare_mass (uniform pretraining data "
                    "has no rare symbols)"
                )
            if isinstance(self.rare_symbols, str) or len(self.rare_symbols) != k:
                raise ConfigError(
                    f"zoo.rare_symbols: one string per task {self.tasks}, got {self.rare_symbols!r}"
                )
            for task, symbols in zip(self.tasks, self.rare_symbols, strict=True):
                check_rare_symbols(task, symbols)
            # a set, written sorted: "9876" and "6789" are one zoo (one fingerprint)
            sorted_symbols = tuple("".join(sorted(s)) for s in self.rare_symbols)
            object.__setattr__(self, "rare_symbols", sorted_symbols)
        if not all(lr > 0 for lr in self.per_task("expert_lr")):
            raise ConfigError(f"zoo.expert_lr: must be > 0, got {self.expert_lr}")
        if self.loss_on not in LOSS_ON:
            raise ConfigError(f"zoo.loss_on: must be one of {LOSS_ON}, got {self.loss_on!r}")
        for key in ("base_steps", "odd_steps", "batch_size", "n_search", "n_test", "train_pool"):
            if getattr(self, key) < 1:
                raise ConfigError(f"zoo.{key}: must be >= 1, got {getattr(self, key)}")

    @property
    def core_steps(self) -> int:
        """The training steps of the base and the experts (what ``Zoo.build_seconds`` times)."""
        return self.base_steps + sum(self.expert_steps)

    def per_task(self, key: str) -> tuple[Any, ...]:
        """Return setting ``key`` (one value, or one per task) as one value per task."""
        value = getattr(self, key)
        if not isinstance(value, (tuple, list)):
            return (value,) * len(self.tasks)
        if len(value) != len(self.tasks):
            raise ConfigError(f"zoo.{key}: one value, or one per task {self.tasks}; got {value}")
        return tuple(value)

    @classmethod
    def preset(cls, name: str) -> ZooConfig:
        """Return the named preset: "default" (zoo v6, minutes on 2 CPU cores), "v5", "v4" or "tiny"
        (seconds)."""
        if name not in _PRESETS:
            raise ConfigError(f"zoo preset {name!r} unknown; expected one of {sorted(_PRESETS)}")
        return _PRESETS[name]

    def to_dict(self) -> dict[str, Any]:
        """Return the config as plain JSON-able data."""
        return dataclasses.asdict(self)

    def to_manifest(self) -> dict[str, Any]:
        """``to_dict`` as a zoo's manifest keeps it: without keys at the values zoos had before
        the key existed (``loss_on="answer"``), so that older checkouts sharing a cache still
        read the zoos built now (``from_dict`` gives them the default back)."""
        data = self.to_dict()
        for key, value in _BEFORE_THEIR_KEY.items():
            if data[key] == value:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ZooConfig:
        """Return the config written by ``to_dict``; an unknown key raises ConfigError."""
        names = {f.name for f in dataclasses.fields(cls)}
        extra = set(data) - names
        if extra:
            raise ConfigError(f"zoo config: unknown keys {sorted(extra)}")
        kw = dict(data)
        for key in ("shape", "odd_shape"):
            if key in kw:
                kw[key] = ModelShape(**kw[key])
        if "recycling" in kw:
            kw["recycling"] = tuple(
                RecycleSpec(**{**r, "mix": tuple(r.get("mix", ()))}) for r in kw["recycling"]
            )
        for key in ("tasks", "base_mix", "expert_steps", "base_rare_mass", "expert_lr",
                    "rare_symbols"):  # fmt: skip
            if isinstance(kw.get(key), list):
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def fingerprint(self) -> str:
        """Return a hex digest of the settings, the task data they imply and the zoo code version."""
        tasks = [
            make_task(k, self.n_search, self.n_test, self.task_seed).fingerprint for k in self.tasks
        ]
        settings = self.to_manifest()  # loss_on "answer" left out: older zoos keep theirs
        # None (the tasks' own symbols) is left out too (manifests keep it, as they always have)
        if settings["rare_symbols"] is None:
            del settings["rare_symbols"]
        blob = json.dumps([ZOO_VERSION, settings, tasks], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PRESETS: dict[str, ZooConfig] = {
    "default": ZooConfig(),  # zoo v6
    # the default zoo of sessions 19-40 (add, reverse, cipher): most figures in results/ were
    # measured on it; its fingerprint is the one those zoos were cached (and its seed 0 shipped) under
    "v5": ZooConfig(tasks=V5_ZOO_TASKS),
    # the default zoo of sessions 10-18 (the README's v4 figures): v5's base, experts of 600
    # steps at replay 0.7; its fingerprint is the one those zoos were cached under
    "v4": ZooConfig(tasks=V5_ZOO_TASKS, expert_steps=(600, 600, 600), expert_replay=0.7),
    # Seconds to build: for tests and smoke runs. Too small to get answers exactly right, but each
    # expert clearly beats the base on its own task in token accuracy.
    "tiny": ZooConfig(
        tasks=V5_ZOO_TASKS,  # the tests' zoo (its tasks did not change with v6)
        n_search=32,
        n_test=48,
        train_pool=1000,
        shape=ModelShape(hidden=32, layers=2, heads=4, kv_heads=4, intermediate=64),
        batch_size=32,
        warmup=10,
        base_steps=200,
        base_lr=1e-2,
        base_mix=(0.34, 0.33, 0.33),
        expert_steps=(100, 200, 200),
        base_rare_mass=0.01,
        expert_lr=5e-3,
        expert_replay=0.0,
        recycling=tuple(
            dataclasses.replace(r, steps=min(r.steps, 10)) for r in DEFAULT_RECYCLING[:6]
        ),
        odd_shape=ModelShape(hidden=48, layers=2, heads=4, kv_heads=4, intermediate=96),
        odd_steps=40,
        odd_lr=1e-2,
    ),
}


@dataclass(frozen=True)
class Zoo:
    """A built zoo: checkpoint folders, the evaluation tasks and the shared tokenizer.

    ``recycling`` and ``odd_expert`` are empty / None until the extras are built
    (``build_zoo(..., extras=True)``).
    """

    root: Path
    base: Path
    experts: dict[str, Path]  # task name -> checkpoint dir
    recycling: list[Path]
    odd_expert: Path | None
    odd_expert_task: str
    tasks: list[Task]  # the evaluation tasks (search + test splits)
    tokenizer_dir: Path
    config: ZooConfig | None = field(default=None, compare=False)
    build_seconds: float = field(default=0.0, compare=False)  # the base and experts
    extras_seconds: float = field(default=0.0, compare=False)  # the recycling pool, odd expert
    base_run: dict[int, str] = field(default_factory=dict, compare=False)  # step -> snapshot
    # the machine that trained it (cache.build_machine); {} for a zoo built before it was recorded
    built_on: dict[str, Any] = field(default_factory=dict, compare=False)
    # set when the zoo was installed from a copy shipped with MergeGym (shipped.install): from
    # where, when, in how many seconds; {} for a zoo trained on this machine
    installed: dict[str, Any] = field(default_factory=dict, compare=False)
    # the torch thread count the base and experts trained with, and the extras (once built);
    # None where a manifest predates the count
    train_threads: int | None = field(default=None, compare=False)
    extras_threads: int | None = field(default=None, compare=False)

    @property
    def has_extras(self) -> bool:
        """Whether the recycling pool and the odd expert are built."""
        return self.odd_expert is not None

    def checkpoints(self) -> dict[str, Path]:
        """Return every checkpoint dir by a display name: base, experts, then (once built) the
        odd expert and the recycling pool."""
        out = core_checkpoints(self)
        if self.odd_expert is not None:
            out[f"odd:{self.odd_expert_task}"] = self.odd_expert
        out.update({f"recycle:{p.name}": p for p in self.recycling})
        return out


def _new_model(shape: ModelShape, tokenizer: Any, seed: int, device: str) -> Any:
    """Return a freshly initialised LlamaForCausalLM (seeded without touching the global RNG)."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=shape.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        attention_dropout=0.0,
    )
    # Eager attention is faster than SDPA for these tiny shapes on CPU.
    cfg._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    return model.to(device)


def _save(model: Any, tokenizer: Any, out: Path) -> Path:
    """Write a loadable HF folder: safetensors weights, config, generation config, tokenizer."""
    from merge_env.search.assemble import quiet_loading

    # One "Writing model shards" bar per save would break up the build's own progress bar.
    with quiet_loading():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---------------------------------------------------------------- building and loading


def _one_hot(config: ZooConfig, task: str) -> tuple[float, ...]:
    """Return the mixture that trains on ``task`` alone."""
    return tuple(float(t == task) for t in config.tasks)


def _expert_mix(config: ZooConfig, task: str) -> tuple[float, ...]:
    """An expert's mixture over [pretraining pools..., domain pools...]: ``expert_replay`` of the
    base's pretraining mixture, the rest its own task's data."""
    total = sum(config.base_mix)
    replay = [config.expert_replay * w / total for w in config.base_mix]
    own = [(1.0 - config.expert_replay) * w for w in _one_hot(config, task)]
    return (*replay, *own)


class _Trainer:
    """What both build stages share: the tokenizer, the tasks, the training rows, one progress bar."""

    def __init__(self, config: ZooConfig, steps: int, progress: bool, device: str) -> None:
        from tqdm.auto import tqdm

        self.config = config
        self.device = device
        self.tok = char_tokenizer()
        self.tasks = [
            make_task(k, config.n_search, config.n_test, config.task_seed) for k in config.tasks
        ]
        self.bar = tqdm(total=steps, disable=not progress, unit="step")

    def rows(self, stream: str, rare_mass: Sequence[float | None]) -> list[Any]:
        """Each task's training rows of ``stream`` ("data": its own; "pretrain": the base's)."""
        from merge_env.scoring.tasks.synthetic import training_examples

        out = []
        symbols = self.config.rare_symbols or (None,) * len(self.tasks)
        for task, mass, rare in zip(self.tasks, rare_mass, symbols, strict=True):
            seed = sub_seed(self.config.seed, f"{stream}:{task.name}")
            examples = training_examples(task.name, self.config.train_pool, seed, task, mass, rare)
            width = self.config.shape.max_positions
            out.append(encode_rows(self.tok, examples, width, self.config.loss_on))
        return out

    def model(self, shape: ModelShape, phase: str) -> Any:
        return _new_model(shape, self.tok, sub_seed(self.config.seed, phase), self.device)

    def from_base(self, zoo: Zoo) -> Any:
        """A model of the config's shape holding ``zoo``'s base weights, where every retraining
        from a built base starts."""
        from safetensors.torch import load_file

        model = self.model(self.config.shape, "init")
        model.load_state_dict(load_file(str(zoo.base / "model.safetensors"), device=self.device))
        return model

    def fit(
        self, model: Any, pools: Sequence[Any], mix: Sequence[float], steps: int, lr: float,
        phase: str, at: Sequence[int] = (),
    ) -> dict[int, dict[str, torch.Tensor]]:  # fmt: skip
        """Train on ``pools`` mixed by ``mix``; state-dict copies taken after each step in ``at``."""
        self.bar.set_description(f"zoo {phase}")
        snaps: dict[int, dict[str, torch.Tensor]] = {}
        if steps < 1 or sum(float(w) for w in mix) <= 0:
            return snaps

        def tick(step: int, loss: float) -> None:
            if step + 1 in at:
                snaps[step + 1] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.bar.update(1)
            if step % 20 == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

        finetune(
            model, mixture_batches(pools, mix, self.config.batch_size),
            warmup_cosine(lr, steps, self.config.warmup, floor=0.1), steps=steps,
            seed=sub_seed(self.config.seed, phase), on_step=tick,
        )  # fmt: skip
        return snaps

    def save(self, model: Any, out: Path, rel: str) -> str:
        _save(model, self.tok, out / rel)
        return rel


def _starts(config: ZooConfig) -> dict[str, int]:
    """The base-run step each recycling checkpoint branches from."""
    return {r.name: max(1, round(r.start * config.base_steps)) for r in config.recycling}


def _build_core(tmp: Path, config: ZooConfig, progress: bool, device: str) -> dict[str, Any]:
    """Train the base and the experts into ``tmp`` and keep the base run's snapshots the recycling
    pool branches from; return the manifest (paths relative)."""
    from safetensors.torch import save_file

    run = _Trainer(config, config.core_steps, progress, device)
    run.tok.save_pretrained(tmp / "tokenizer")
    # each task's own data (uniform symbols) and its share of the base's pretraining data
    domain = run.rows("data", [None] * len(config.tasks))
    pretraining = run.rows("pretrain", config.per_task("base_rare_mass"))
    with run.bar:
        model = run.model(config.shape, "init")
        at = sorted({s for s in _starts(config).values() if s < config.base_steps})
        snaps = run.fit(model, pretraining, config.base_mix, config.base_steps, config.base_lr,
                        "base", at=at)  # fmt: skip
        final = {k: v.detach().clone() for k, v in model.state_dict().items()}
        run.save(model, tmp, "base")
        base_run = {}
        for step, state in snaps.items():
            base_run[str(step)] = f"base_run/step-{step}.safetensors"
            (tmp / "base_run").mkdir(exist_ok=True)
            save_file(state, str(tmp / base_run[str(step)]))
        experts = _fit_experts(run, model, final, [*pretraining, *domain], tmp)
    return {
        "format": "mergegym-zoo",
        "version": ZOO_VERSION,
        "fingerprint": config.fingerprint(),
        "config": config.to_manifest(),
        "base": "base",
        "experts": experts,
        "base_run": base_run,
        "odd_expert_task": config.odd_task,
        "tokenizer": "tokenizer",
        "tasks": task_records(run.tasks),
    }


def _build_extras(tmp: Path, zoo: Zoo, progress: bool, device: str) -> dict[str, Any]:
    """Train the recycling pool and the odd expert of the built core ``zoo`` into ``tmp``.

    Branches start from the base run's saved snapshots (or the final base), so they hold the same
    tensors as when the whole zoo was trained in one go.
    """
    from safetensors.torch import load_file

    config = zoo.config
    assert config is not None
    steps = sum(r.steps for r in config.recycling) + config.odd_steps
    run = _Trainer(config, steps, progress, device)
    domain = run.rows("data", [None] * len(config.tasks))
    with run.bar:
        model = run.model(config.shape, "init")
        recycling = []
        for spec in config.recycling:
            step = _starts(config)[spec.name]
            if step >= config.base_steps:
                state = load_file(str(zoo.base / "model.safetensors"))
            else:
                state = load_file(str(zoo.root / zoo.base_run[step]))
            model.load_state_dict(state)
            run.fit(model, domain, spec.mix, spec.steps, spec.lr, f"recycle:{spec.name}")
            recycling.append(run.save(model, tmp, f"recycling/{spec.name}"))
        odd = run.model(config.odd_shape, "odd-init")
        run.fit(odd, domain, _one_hot(config, config.odd_task), config.odd_steps, config.odd_lr,
                "odd")  # fmt: skip
        run.save(odd, tmp, "odd_expert")
    return {
        "format": "mergegym-zoo-extras",
        "fingerprint": config.fingerprint(),
        "recycling": recycling,
        "odd_expert": "odd_expert",
    }


def build_zoo(
    config: ZooConfig,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    device: str = "cpu",
    extras: bool = False,
    shipped: bool = True,
) -> Zoo:
    """Return the zoo for ``config``, from ``<cache_dir>/zoo-<fingerprint>`` or made there now.

    The base and the experts (all a search needs) come first: installed from the copy shipped
    with MergeGym when one exists for the config's fingerprint (``merge_env.pools.shipped``: the
    same bits on every machine; ``shipped=False`` trains instead), else trained here.
    ``extras``: also the recycling pool and the odd expert (checkpoint recycling, heterogeneous
    MoE), trained on first request into ``<root>/extras`` from the base run's snapshots.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fingerprint = config.fingerprint()
    root = cache / f"zoo-{fingerprint}"
    entry = shipped_entry(fingerprint) if shipped else None
    if (root / MANIFEST).is_file():
        logger.info("zoo found in cache: %s", root)
    elif entry is not None:
        install(fingerprint, root)
        logger.info("zoo installed from the shipped copy (weights %s): %s",
                    entry["weights_digest"], root)  # fmt: skip
    else:
        with pinned_threads():
            manifest = build_atomically(
                root, MANIFEST, lambda tmp: _build_core(tmp, config, progress, device),
                "build_seconds",
            )  # fmt: skip
        logger.info("zoo built in %.1f s: %s", manifest["build_seconds"], root)
    zoo = load_zoo(root)
    if not zoo.installed:  # an installed copy trained on the shipping machine, not here
        warn_other_thread_count(root, zoo.train_threads, logger)
    if not shipped and zoo.installed:  # found so, or published by another process meanwhile
        raise ConfigError(
            f"{root}: holds the zoo shipped with MergeGym, and shipped=False asks to train one "
            "here: point the cache elsewhere (cache_dir, $MERGEGYM_CACHE) or remove it"
        )
    if entry is not None and not zoo.installed:
        digest = core_digest(zoo)
        if digest != entry["weights_digest"]:
            logger.warning(
                "%s holds a zoo trained on %s (weights %s), not the one shipped with MergeGym "
                "(weights %s), which the README's figures stand on: remove the folder to "
                "install the shipped copy", root, zoo.built_on.get("cpu", "some machine"),
                digest, entry["weights_digest"],
            )  # fmt: skip
    kept = zoo.extras_threads  # None until the extras are built (or where a manifest predates it)
    if extras and kept is not None and zoo.train_threads not in (None, kept):
        logger.warning(
            "%s: its recycling pool and odd expert trained with %d torch thread(s), its base and "
            "experts with %d, so they are not the tensors a build in one go gives; remove %s to "
            "train them again at %d", root, kept, zoo.train_threads, root / EXTRAS, zoo.train_threads,
        )  # fmt: skip
    if not extras or zoo.has_extras:
        return zoo
    # at the core's thread count, so the extras hold the tensors a zoo trained in one go would
    threads = zoo.train_threads or train_threads()
    with pinned_threads(threads):
        info = build_atomically(
            root / EXTRAS, EXTRAS_MANIFEST,
            lambda tmp: {**_build_extras(tmp, zoo, progress, device), "train_threads": threads},
            "build_seconds",
        )  # fmt: skip
    logger.info("zoo extras built in %.1f s: %s", info["build_seconds"], root / EXTRAS)
    return load_zoo(root)


# ZooConfig keys a variant of the experts may change (the base, its data and the tasks stay)
EXPERT_KEYS = ("expert_steps", "expert_lr", "expert_replay")


def train_expert_variant(
    zoo: Zoo,
    out: str | Path,
    overrides: Mapping[str, Any] | None = None,
    *,
    lora: LoraSpec | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> dict[str, Path]:
    """Fine-tune the experts again from the zoo's own base, with other expert settings.

    ``overrides``: keys of ``EXPERT_KEYS``; ``lora``: train low-rank adapters instead of every
    weight, merged into the weights when done. Everything else is the zoo's: the base, the
    pretraining and task data, the seeds and the order, so with no change the experts come out
    bit for bit the zoo's own (at the thread count it was built with). The experts are trained
    in a dot-folder and published as ``out`` (``out/variant.json`` records the settings); an
    existing ``out`` is replaced, a failed run leaves none. Returns {task: checkpoint dir} under
    ``out/experts``, for comparing regimes (``experiments.regime_variants``).
    """
    if zoo.config is None:
        raise ConfigError(f"{zoo.root}: the zoo manifest has no config to vary")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(EXPERT_KEYS))
    if unknown:
        raise ConfigError(f"expert variant: {unknown} not among the expert keys {EXPERT_KEYS}")
    fixed = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        config = dataclasses.replace(zoo.config, **fixed)
    except TypeError as err:  # e.g. expert_steps=300 where one count per task is due
        raise ConfigError(f"expert variant: {overrides}: {err}") from err
    out = Path(out)
    if out.exists():  # the same variant trained before: replaced, never mixed
        shutil.rmtree(out)
    with pinned_threads():
        build_atomically(
            out, "variant.json",
            lambda tmp: _train_experts(zoo, config, tmp, lora, progress, device), "seconds",
        )  # fmt: skip
    return {task: out / "experts" / task for task in config.tasks}


def continue_base(
    zoo: Zoo, steps: int | None = None, lr: float | None = None, *, device: str = "cpu"
) -> Any:
    """The zoo's base trained further on its own pretraining mixture alone, with no task data.

    The control for how much of an expert's gain is more pretraining: where this continuation
    reaches much of a gain, every expert carries that part, and a merge's kept share counts it
    too. ``steps`` and ``lr`` default to the first expert's; the model, its start from the base
    file, the schedule (warm-up, cosine to 0.1 x the peak), the batch size, the pretraining rows
    and the pinned threads are the experts' (the batch draws are seeded by the first expert's
    phase), so an expert and its continuation differ in the task data only. Deterministic on one
    machine. Returns the model, in eval mode; nothing is written.
    """
    if zoo.config is None:
        raise ConfigError(f"{zoo.root}: the zoo manifest has no config to continue the base with")
    config = zoo.config
    steps = config.expert_steps[0] if steps is None else steps
    rate = config.per_task("expert_lr")[0] if lr is None else lr
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"continue_base: steps must be an integer >= 1, got {steps!r}")
    if not rate > 0:
        raise ConfigError(f"continue_base: lr must be > 0, got {rate!r}")
    run = _Trainer(config, steps, False, device)
    pretraining = run.rows("pretrain", config.per_task("base_rare_mass"))
    model = run.from_base(zoo)
    with pinned_threads(zoo.train_threads):
        run.fit(model, pretraining, config.base_mix, steps, rate, f"expert:{config.tasks[0]}")
    return model.eval()


def _train_experts(
    zoo: Zoo, config: ZooConfig, out: Path, lora: LoraSpec | None, progress: bool, device: str
) -> dict[str, Any]:
    """``train_expert_variant``'s training into ``out``; returns its manifest."""
    run = _Trainer(config, sum(config.expert_steps), progress, device)
    domain = run.rows("data", [None] * len(config.tasks))
    pretraining = run.rows("pretrain", config.per_task("base_rare_mass"))
    with run.bar:
        model = run.from_base(zoo)
        base = {k: v.detach().clone() for k, v in model.state_dict().items()}
        experts = _fit_experts(run, model, base, [*pretraining, *domain], out, lora)
    return {
        "format": "mergegym-expert-variant", "zoo": str(zoo.root), "config": config.to_manifest(),
        "lora": dataclasses.asdict(lora) if lora else None, "experts": experts,
    }  # fmt: skip


def _fit_experts(
    run: _Trainer,
    model: Any,
    base: Mapping[str, Any],
    rows: list,
    out: Path,
    lora: LoraSpec | None = None,
) -> dict[str, str]:
    """Fine-tune one expert per task of ``run``'s config from the ``base`` state, on the
    pretraining and task ``rows`` in the task's expert mix, each saved under ``out/experts``
    (``lora``: low-rank adapters merged into the weights when done); returns {task: path}."""
    config = run.config
    experts: dict[str, str] = {}
    lrs = config.per_task("expert_lr")
    for task, n, lr in zip(config.tasks, config.expert_steps, lrs, strict=True):
        model.load_state_dict(base)
        phase, mix = f"expert:{task}", _expert_mix(config, task)
        if lora is None:
            run.fit(model, rows, mix, n, lr, phase)
        else:
            with lora_adapters(model, lora, sub_seed(config.seed, f"lora:{task}")):
                run.fit(model, rows, mix, n, lr, phase)
        experts[task] = run.save(model, out, f"experts/{task}")
    return experts


def load_zoo(root: str | Path) -> Zoo:
    """Return the zoo described by ``<root>/zoo.json`` (and ``<root>/extras/extras.json`` once
    the extras are built); a missing or broken part raises CheckpointError."""
    root = Path(root)
    path = root / MANIFEST
    data = read_manifest(path, "mergegym-zoo", "MergeGym zoo")
    extras_path = root / EXTRAS / EXTRAS_MANIFEST
    extras_seconds = 0.0
    extras_threads = None
    try:
        tasks = tasks_from_records(data["tasks"])
        base, tok = root / data["base"], root / data["tokenizer"]
        experts = {k: root / v for k, v in data["experts"].items()}
        config = ZooConfig.from_dict(data["config"])
        base_run = {int(k): str(v) for k, v in data.get("base_run", {}).items()}
        # a zoo built whole (before the extras were split off) lists them in zoo.json itself
        recycling = [root / p for p in data.get("recycling", [])]
        odd = root / data["odd_expert"] if data.get("odd_expert") else None
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: malformed zoo manifest ({err!r})") from err
    if odd is None and extras_path.is_file():
        extras = read_manifest(extras_path, "mergegym-zoo-extras", "MergeGym zoo extras")
        try:
            if extras["fingerprint"] != data["fingerprint"]:
                raise ValueError(f"fingerprint {extras['fingerprint']} is not the zoo's")
            recycling = [root / EXTRAS / p for p in extras["recycling"]]
            odd = root / EXTRAS / extras["odd_expert"]
            extras_seconds = float(extras.get("build_seconds", 0.0))
            extras_threads = recorded_threads(extras)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(
                f"{extras_path}: malformed zoo extras manifest ({err!r})"
            ) from err
    require_checkpoints([base, *experts.values(), *recycling, *([odd] if odd else [])], "zoo")
    for snapshot in base_run.values():
        if not (root / snapshot).is_file():
            raise CheckpointError(f"{root / snapshot}: base-run snapshot missing")
    if not (tok / "tokenizer.json").is_file():
        raise CheckpointError(f"{tok}: zoo tokenizer missing (no tokenizer.json)")
    return Zoo(
        root=root,
        base=base,
        experts=experts,
        recycling=recycling,
        odd_expert=odd,
        odd_expert_task=str(data["odd_expert_task"]),
        tasks=tasks,
        tokenizer_dir=tok,
        config=config,
        build_seconds=float(data.get("build_seconds", 0.0)),
        extras_seconds=extras_seconds,
        base_run=base_run,
        built_on=recorded_machine(data),
        installed=(
            {**data[INSTALLED_KEY], "seconds": float(data.get("install_seconds", 0.0))}
            if data.get(INSTALLED_KEY)
            else {}
        ),
        train_threads=recorded_threads(data),
        extras_threads=extras_threads,
    )
