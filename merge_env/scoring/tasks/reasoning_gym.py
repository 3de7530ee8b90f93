"""Tasks from reasoning-gym's generators (the optional ``reasoning-gym`` package, imported when asked for)."""

from __future__ import annotations

import logging
from typing import Any

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task

logger = logging.getLogger(__name__)

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
