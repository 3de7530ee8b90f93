"""What the agent tests share: fresh MergeProblems over the tiny zoo."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import BASE

EXAMPLES = 8  # per task: the agents' logic is under test here, not the scores


@pytest.fixture(scope="module")
def fresh_problem(tiny_zoo, tmp_path_factory):
    """A function building a MergeProblem over the tiny zoo with its own archive and cache.

    Each cache starts as a copy of one holding the reference scores (the ideal point, which every
    agent normalises by), so fresh problems (CMA-ES restarts included) do not score the
    references again.
    """
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}

    def build(d: Path) -> MergeProblem:
        return build_problem(
            sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, max_examples=EXAMPLES,
            metric="token_accuracy",
            archive_path=d / "archive.jsonl", cache_path=d / "cache.sqlite",
        )  # fmt: skip

    refs = tmp_path_factory.mktemp("references")
    seed_problem = build(refs)
    seed_problem.references()
    seed_problem.evaluator.cache.close()  # folds SQLite's WAL into the file before it is copied

    def make() -> MergeProblem:
        d = tmp_path_factory.mktemp("problem")
        shutil.copy(refs / "cache.sqlite", d / "cache.sqlite")
        return build(d)

    return make


def backend_calls(problem: MergeProblem) -> list[int]:
    """Wrap ``problem``'s back-end; the list returned grows by each call's batch size."""
    calls: list[int] = []
    inner = problem.backend

    def spy(recipes, evaluator, split):
        calls.append(len(recipes))
        return inner(recipes, evaluator, split)

    problem.backend = spy
    return calls


@pytest.fixture
def converged(monkeypatch):
    """A converged population: until the agent's first restart, every generation of a pymoo
    agent re-proposes the first one's (scored) genomes, so it spends nothing."""
    import numpy as np

    from agents.genome import GenomeAgent

    real = GenomeAgent.evaluate_genomes
    first: list[np.ndarray] = []

    def repeat(self, problem, budget, genome, X):
        if not first:
            first.append(X.copy())
        elif self.restarts == 0:
            X = first[0]
        return real(self, problem, budget, genome, X)

    monkeypatch.setattr(GenomeAgent, "evaluate_genomes", repeat)
