"""The zoo's synthetic tasks (add, reverse, cipher, atbash) and the character-level tokenizer.

Zoo tasks are small synthetic problems for a character-level model; every prompt starts with a
task tag so one model can learn them all. Each task has its own symbols, as real domains have
their own vocabulary (math its digits, code its keywords): add works on digits, reverse on
lower-case letters, cipher on upper-case letters. Atbash (lower-case letters, each mapped to its
mirror a<->z, b<->y, ...) is a substitution like cipher: a letter-for-letter "translation" that
reads each output letter from the input letter at the same position, where reverse reads it from
the mirrored position. The default zoo uses add, atbash and cipher (``DEFAULT_ZOO_TASKS``, zoo v6);
zoos v3-v5 used add, reverse and cipher (``V5_ZOO_TASKS``).

Some symbols of each task are *rare*: drawn with ``rare_mass`` (the share of all symbol draws
they get together), they stand for the domain knowledge a base model's pretraining data holds
little of; a domain fine-tune, on the task's own (uniform) data, learns them. Evaluation splits
are uniform.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import numpy as np

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task

logger = logging.getLogger(__name__)

ZOO_TASK_KINDS: tuple[str, ...] = ("add", "reverse", "cipher", "atbash")
# The default zoo's tasks (zoo v6, session 41: atbash in reverse's place; results/zoo_v6/)
DEFAULT_ZOO_TASKS: tuple[str, ...] = ("add", "atbash", "cipher")
# The tasks of zoos v3-v5 (the v4 and v5 presets, the tiny preset the tests build)
V5_ZOO_TASKS: tuple[str, ...] = ("add", "reverse", "cipher")
ZOO_TAGS: dict[str, str] = {"add": "add", "reverse": "rev", "cipher": "enc", "atbash": "atb"}
_DIGITS = "0123456789"
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
# A fixed upper-case letter substitution (A->Q, B->W, ...): the "translation" every zoo model
# shares, so it must not depend on any seed.
CIPHER_KEY = "QWERTYUIOPASDFGHJKLZXCVBNM"
_CIPHER = str.maketrans(_UPPER, CIPHER_KEY)
_ATBASH = str.maketrans(_LOWER, _LOWER[::-1])
# The rare symbols of each task: digits 7-9, the second half of each alphabet.
RARE_SYMBOLS: dict[str, str] = {
    "add": "789",
    "reverse": _LOWER[13:],
    "cipher": _UPPER[13:],
    "atbash": _LOWER[13:],
}
CHAR_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
DEFAULT_ALPHABET = "".join(chr(i) for i in range(32, 127)) + "\n\t"


# A skewed draw: (the share of all symbol draws the rare symbols get together, the rare symbols).
Skew = tuple[float, str]


def _symbols(alphabet: str, n: int, rng: np.random.Generator, skew: Skew | None) -> str:
    """``n`` symbols of ``alphabet``: uniform, or skewed (``skew``: mass on the rare symbols)."""
    chars = np.array(list(alphabet))
    if skew is None:
        return "".join(rng.choice(chars, size=n))
    rare_mass, rare_symbols = skew
    rare = np.array([c in rare_symbols for c in alphabet])
    p = np.where(rare, rare_mass / rare.sum(), (1.0 - rare_mass) / (~rare).sum())
    return "".join(rng.choice(chars, size=n, p=p))


def _draw(kind: str, rng: np.random.Generator, skew: Skew | None = None) -> Example:
    """Return one random zoo example of ``kind`` (uniform symbols unless ``skew``)."""
    tag = ZOO_TAGS[kind]
    if kind == "add":
        # Two-digit plus one- or two-digit, half each: hard enough to need learning, easy enough
        # that a small model trained briefly gets some right (3-digit addition did not).
        def digits(alphabet: str) -> str:
            return _symbols(alphabet, 1, rng, skew)

        def two_digits() -> str:
            head = digits("123456789")
            return head + digits(_DIGITS)

        a = two_digits()
        b = digits(_DIGITS) if rng.random() < 0.5 else two_digits()
        return Example(f"{tag} {a}+{b}=", str(int(a) + int(b)))
    n = int(rng.integers(3, 7))
    if kind == "reverse":
        word = _symbols(_LOWER, n, rng, skew)
        return Example(f"{tag} {word}=", word[::-1])
    if kind == "atbash":
        word = _symbols(_LOWER, n, rng, skew)
        return Example(f"{tag} {word}=", word.translate(_ATBASH))
    word = _symbols(_UPPER, n, rng, skew)
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


def check_rare_symbols(kind: str, symbols: object) -> None:
    """ConfigError unless ``symbols`` is a string of distinct symbols of task ``kind`` that
    leaves every alphabet the task draws from with rare and common symbols both (add's leading
    digit is drawn from 1-9, so "0" alone, or all of 1-9, would leave it one-sided)."""
    alphabets = {
        "add": (_DIGITS, "123456789"),
        "reverse": (_LOWER,),
        "cipher": (_UPPER,),
        "atbash": (_LOWER,),
    }
    if kind not in alphabets:
        raise ConfigError(f"unknown zoo task kind {kind!r}; expected one of {ZOO_TASK_KINDS}")
    ok = isinstance(symbols, str) and len(set(symbols)) == len(symbols)
    ok = ok and all(set(symbols) & set(a) and set(a) - set(symbols) for a in alphabets[kind])
    if not ok or not set(symbols) <= set(alphabets[kind][0]):
        raise ConfigError(
            f"zoo task {kind!r}: rare symbols {symbols!r} must be a string of distinct symbols "
            f"of {alphabets[kind][0]!r}, some but not all"
            + (" (and some but not all of 1-9, the leading digits)" if kind == "add" else "")
        )


def training_examples(
    kind: str,
    n: int,
    seed: int,
    exclude: Task | None = None,
    rare_mass: float | None = None,
    rare_symbols: str | None = None,
) -> list[Example]:
    """Return ``n`` zoo training examples of ``kind`` sharing no prompt with ``exclude``.

    Uniform (``rare_mass=None``, the task's own data): distinct prompts. With ``rare_mass`` (a
    base model's pretraining share of the rare symbols, ``rare_symbols`` or by default the task's
    ``RARE_SYMBOLS``): drawn independently, so common prompts repeat as they do in pretraining
    data (distinct prompts would run out of common ones and fill up with rare symbols).
    """
    banned = set() if exclude is None else {ex.prompt for ex in exclude.search + exclude.test}
    rng = _rng(kind, seed, 1)
    if rare_mass is None:
        return _unique(kind, n, rng, banned)
    if not 0.0 <= rare_mass <= 1.0:
        raise ConfigError(f"zoo task {kind!r}: rare_mass must be in [0, 1], got {rare_mass}")
    if rare_symbols is not None:
        check_rare_symbols(kind, rare_symbols)
    skew = (rare_mass, RARE_SYMBOLS[kind] if rare_symbols is None else rare_symbols)
    out: list[Example] = []
    while len(out) < n:
        ex = _draw(kind, rng, skew)
        if ex.prompt not in banned:
            out.append(ex)
    return out


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
