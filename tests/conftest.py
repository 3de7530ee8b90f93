"""Shared fixtures: tiny real checkpoints built by the tests themselves (no network)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `make test` runs one pytest worker per core (pytest-xdist): a worker, its zoo builds and the
# subprocesses it starts (CLI tests) keep to one thread, so the workers do not oversubscribe the
# cores. A test that needs another count (a zoo's own, to reproduce it) sets it itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MERGEGYM_TRAIN_THREADS", "1")
# tiny models gain nothing from a second thread, and OpenMP spin-waits cost a lot when the
# machine is busy (a tiny zoo build: 15 s with one thread, 120 s with two under load)
torch.set_num_threads(1)


def _config(family: str, layers: int, hidden: int, vocab: int, tied: bool):
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    if family == "gpt2":
        return GPT2Config(
            n_layer=layers, n_embd=hidden, n_head=4, vocab_size=vocab, n_positions=64,
            tie_word_embeddings=tied,
        )  # fmt: skip
    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
    return cls(
        num_hidden_layers=layers, hidden_size=hidden, intermediate_size=2 * hidden,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab,
        max_position_embeddings=64, tie_word_embeddings=tied,
    )  # fmt: skip


def build_tiny(
    out: Path,
    family: str = "llama",
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 32,
    vocab: int = 64,
    tied: bool = False,
    like: Path | None = None,
    noise: float = 0.02,
) -> Path:
    """Save a tiny random model; with ``like``, a 'fine-tune' of it: its weights plus seeded noise."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if like is not None:
        model = AutoModelForCausalLM.from_pretrained(like)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(noise * torch.randn(p.shape, generator=g))
    else:
        model = AutoModelForCausalLM.from_config(_config(family, layers, hidden, vocab, tied))
    model.save_pretrained(out)
    return out


def tiny_llama_for(tok, seed: int = 0):
    """A tiny random Llama (tied embeddings) sized to the tokenizer ``tok``, its specials set."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


@pytest.fixture
def tiny_factory(tmp_path: Path) -> Callable[..., Path]:
    """A function that builds tiny checkpoints under this test's tmp_path."""
    counter = iter(range(10_000))

    def make(family: str = "llama", **kw) -> Path:
        return build_tiny(tmp_path / f"{family}-{next(counter)}", family, **kw)

    return make


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The tiny zoo, built once per test session (seconds).

    ``MERGEGYM_TEST_ZOO_CACHE=DIR`` keeps it between sessions (the zoo cache is keyed by its
    settings, so a changed preset is rebuilt); unset, each session builds its own.
    """
    from merge_env.pools.zoo import ZooConfig, build_zoo

    cache = os.environ.get("MERGEGYM_TEST_ZOO_CACHE") or tmp_path_factory.mktemp("zoo")
    return build_zoo(ZooConfig.preset("tiny"), cache, progress=False, extras=True)


@pytest.fixture
def make_problem(tiny_zoo, tmp_path):
    """A function building a fresh MergeProblem over the tiny zoo (own archive and cache)."""
    from merge_env.search.problem import build_problem
    from merge_env.search.recipe import BASE

    counter = iter(range(10_000))

    def make(**kw):
        d = tmp_path / f"problem-{next(counter)}"
        d.mkdir()
        kw.setdefault("archive_path", d / "archive.jsonl")
        kw.setdefault("cache_path", d / "cache.sqlite")
        kw.setdefault("metric", "token_accuracy")  # the tiny zoo barely reaches exact matches
        sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
        return build_problem(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, **kw)

    return make


@pytest.fixture
def tiny_domain_seed(tmp_path, monkeypatch):
    """A tiny Llama with a character tokenizer standing in for the converted SmolLM2 as the
    domain pool's seed model (in ``<tmp_path>/cache``)."""
    from merge_env.pools import domains, gguf
    from merge_env.scoring.tasks.synthetic import char_tokenizer

    tok = char_tokenizer()
    base = tmp_path / "cache" / "gguf-tiny"
    gguf.save_hf_folder(tiny_llama_for(tok), tok, base)
    monkeypatch.setattr(domains, "converted_base", lambda gguf_file, cache_dir: base)
    return base
