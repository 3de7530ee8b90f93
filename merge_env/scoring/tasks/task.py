"""Task: prompts with reference answers in two disjoint splits, and the metric that heads them.

A Task holds two disjoint splits: ``search`` (what a search may score merges on) and ``test``
(held out, for the final report). Answers carry no end marker: the evaluator appends the
tokenizer's EOS. Where tasks come from: ``synthetic`` (the zoo's generators), ``jsonl``,
``reasoning_gym``, ``humaneval``; ``chat`` renders any of them through a chat template.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from merge_env.errors import ConfigError

logger = logging.getLogger(__name__)

# each metric and the best value it can take (every answer right; every answer token at
# probability 1): one table, so a new metric cannot lack its best value
METRIC_BEST: dict[str, float] = {"exact_match": 1.0, "token_accuracy": 1.0, "loglik": 0.0}
METRICS: tuple[str, ...] = tuple(METRIC_BEST)
SPLITS: tuple[str, ...] = ("search", "test")
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
    ``eos``: each answer ends with the tokenizer's EOS (a reply is finished there); False for a
    continuation of running text (a domain passage), which does not end where the answer does.
    """

    name: str
    search: tuple[Example, ...]
    test: tuple[Example, ...]
    metric: str = "exact_match"
    scorer: Scorer | None = field(default=None, compare=False, repr=False)
    eos: bool = True

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
        if not self.eos:  # left out when True: the digest every task had before the key existed
            payload["eos"] = False
        blob = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def score_answer(self, example: Example, generated: str) -> float:
        """Return the score of generated text: the task's scorer, else stripped exact match."""
        if self.scorer is not None:
            return float(self.scorer(example, generated))
        return float(generated.strip() == example.answer.strip())


def split_examples(
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
