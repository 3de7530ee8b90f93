"""The zoo's synthetic tasks (add, reverse, cipher) and the character-level tokenizer they use.

Zoo tasks are small synthetic problems for a character-level model; every prompt starts with a
task tag so one model can learn them all."""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task

logger = logging.getLogger(__name__)

ZOO_TASK_KINDS: tuple[str, ...] = ("add", "reverse", "cipher")
ZOO_TAGS: dict[str, str] = {"add": "add", "reverse": "rev", "cipher": "enc"}
# A fixed letter substitution (a->q, b->w, ...): the "translation" every zoo model shares, so it
# must not depend on any seed.
CIPHER_KEY = "qwertyuiopasdfghjklzxcvbnm"
_CIPHER = str.maketrans("abcdefghijklmnopqrstuvwxyz", CIPHER_KEY)
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
CHAR_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
DEFAULT_ALPHABET = "".join(chr(i) for i in range(32, 127)) + "\n\t"


def _draw(kind: str, rng: np.random.Generator) -> Example:
    """Return one random zoo example of ``kind``."""
    tag = ZOO_TAGS[kind]
    if kind == "add":
        # Two-digit plus one- or two-digit, half each: hard enough to need learning, easy enough
        # that a small model trained briefly gets some right (3-digit addition did not).
        a = int(rng.integers(10, 100))
        b = int(rng.integers(0, 10)) if rng.random() < 0.5 else int(rng.integers(10, 100))
        return Example(f"{tag} {a}+{b}=", str(a + b))
    word = "".join(rng.choice(_LETTERS, size=int(rng.integers(3, 7))))
    if kind == "reverse":
        return Example(f"{tag} {word}=", word[::-1])
    return Example(f"{tag} {word}=", word.translate(_CIPHER))


def _rng(kind: str, seed: int, stream: int) -> np.random.Generator:
    """Return a generator for (kind, seed, stream); crc32 keeps kinds apart across runs."""
    if kind not in ZOO_TASK_KINDS:
        raise ConfigError(f"unknown zoo task kind {kind!r}; expected one of {ZOO_TASK_KINDS}")
    return np.random.default_rng([int(seed), zlib.crc32(kind.encode()), stream])


def _unique(kind: str, n: int, rng: np.random.Generator, exclude: set[str]) -> list[Example]:
    """Return ``n`` examples with distinct prompts, none in ``exclude``."""
    out: list[Example] = []
    seen = set(exclude)
    misses = 0
    while len(out) < n:
        ex = _draw(kind, rng)
        if ex.prompt in seen:
            misses += 1
            # So many repeats in a row means the prompt space is (nearly) used up.
            if misses > 20_000:
                raise ConfigError(
                    f"zoo task {kind!r}: cannot draw {n} distinct prompts "
                    f"({len(out)} found, {len(exclude)} excluded)"
                )
            continue
        misses = 0
        seen.add(ex.prompt)
        out.append(ex)
    return out


def make_task(kind: str, n_search: int, n_test: int, seed: int) -> Task:
    """Return the zoo task ``kind`` with disjoint, seed-determined search and test splits."""
    if n_search < 0 or n_test < 0:
        raise ConfigError(f"zoo task {kind!r}: n_search and n_test must be >= 0")
    examples = _unique(kind, n_search + n_test, _rng(kind, seed, 0), set())
    return Task(kind, tuple(examples[:n_search]), tuple(examples[n_search:]))


def training_examples(kind: str, n: int, seed: int, exclude: Task | None = None) -> list[Example]:
    """Return ``n`` zoo training examples of ``kind`` sharing no prompt with ``exclude``."""
    banned = set() if exclude is None else {ex.prompt for ex in exclude.search + exclude.test}
    return _unique(kind, n, _rng(kind, seed, 1), banned)


def char_tokenizer(alphabet: str | None = None) -> Any:
    """Return a character-level PreTrainedTokenizerFast: one token per char, <s> prepended.

    Ids: <pad>=0, <s>=1, </s>=2, <unk>=3, then ``alphabet`` (default printable ASCII, newline,
    tab) in order. A BPE model with no merges splits text into single characters without a
    pre-tokenizer, so spaces survive; the Fuse decoder joins characters back without spaces.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = DEFAULT_ALPHABET if alphabet is None else alphabet
    vocab = {tok: i for i, tok in enumerate(CHAR_SPECIALS)}
    for ch in alphabet:
        if len(ch) != 1 or ch in vocab:
            raise ConfigError(f"char_tokenizer: alphabet character {ch!r} repeated or special")
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    backend.decoder = decoders.Fuse()
    bos = vocab["<s>"]
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
