"""Tasks from JSONL files of {"prompt": ..., "answer": ...} lines (optionally gzipped)."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task, split_examples

logger = logging.getLogger(__name__)


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


def load_jsonl(
    path: str | Path, name: str, n_test: int | float, seed: int, metric: str = "exact_match"
) -> Task:
    """Return a Task from lines {"prompt": ..., "answer": ...}, test split drawn with ``seed``."""
    path = Path(path)
    examples = _read_jsonl(path)
    if not examples:
        raise ConfigError(f"{path}: task {name!r}: the file holds no examples")
    search, test = split_examples(examples, n_test, seed, str(path))
    if not search:
        raise ConfigError(
            f"{path}: task {name!r}: {len(examples)} example(s), all in the test split "
            f"(n_test={n_test}); the search split needs at least one"
        )
    return Task(name, tuple(search), tuple(test), metric)
