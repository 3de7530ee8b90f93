"""Batch proposals (issue 18 item 2): what an agent proposes at once reaches the scorer as one
batch, with the archive, the ledger and the spending of the one-by-one path."""

from __future__ import annotations

import numpy as np
import pytest

from agents.cmaes import CMAESAgent
from agents.ppo.agent import PPOAgent, _lattice
from merge_env.scoring.prefix import PrefixCache
from merge_env.search.budget import Budget
from tests.agents.conftest import backend_calls

PPO = dict(proposals=0, sweep_preferences=15, anchors=False, screening=False)


def one_by_one_sweep(agent: PPOAgent, problem, budget: Budget) -> None:
    """The sweep as it was before batching: each preference rolled out and scored in turn."""
    env = agent.make_env(problem)
    for pref in _lattice(env.unwrapped.k, agent.sweep_preferences):
        obs, _ = env.reset(options={"preference": pref})
        done = False
        while not done:
            if budget.exhausted(problem.cost("full")):
                return
            action, _ = agent.model.predict(obs, deterministic=True)
            obs, _, done, _, _ = env.step(action)


def swept(make_problem, batched: bool, budget: float, prefix_bytes: int | None = None):
    """A fresh problem swept by a fresh seeded policy; returns the problem and its calls."""
    problem = make_problem()
    if prefix_bytes is not None:
        problem.evaluator.prefix_cache = PrefixCache(prefix_bytes)
    problem.references()  # the ideal point, uncharged, before any budget starts
    calls = backend_calls(problem)
    agent = PPOAgent(seed=1, **PPO)
    agent.model = agent.build_model(agent.make_train_env(problem))
    b = Budget(problem, budget)
    (agent.sweep if batched else lambda p, bb: one_by_one_sweep(agent, p, bb))(problem, b)
    return problem, calls


def archive_rows(problem):
    return [(e.recipe_hash, e.source, e.scores, e.evaluations) for e in problem.archive]


@pytest.mark.parametrize("budget", [2.5, 100.0])
def test_batched_sweep_equals_one_by_one(make_problem, budget):
    """Same archive (order, scores, evaluations), ledger and spending; one back-end call."""
    old, old_calls = swept(make_problem, batched=False, budget=budget)
    new, new_calls = swept(make_problem, batched=True, budget=budget)
    assert archive_rows(new) == archive_rows(old)
    assert new.ledger.path.read_text() == old.ledger.path.read_text()
    assert new.spent == old.spent > 0
    assert len(new_calls) == 1 and sum(new_calls) == sum(old_calls)
    if budget < 10:  # the budget cut the sweep short, at the same recipe
        assert new.spent <= budget and len(new.archive) < 15


def test_batched_sweep_shares_prefixes_within_the_batch(make_problem):
    """With no LRU across calls (0 bytes), only a batch can reuse a prefix's hidden states."""
    old, _ = swept(make_problem, batched=False, budget=100.0, prefix_bytes=0)
    new, _ = swept(make_problem, batched=True, budget=100.0, prefix_bytes=0)
    assert len(new.archive) > 1
    assert old.evaluator.prefix_cache.stats.slots_reused == 0
    assert new.evaluator.prefix_cache.stats.slots_reused > 0


def test_cmaes_generation_reaches_the_scorer_as_one_batch(make_problem):
    """Genome agents score a generation through evaluate_many: one back-end call per population."""
    problem = make_problem()
    problem.evaluator.prefix_cache = PrefixCache(0)
    problem.references()
    calls = backend_calls(problem)
    agent = CMAESAgent(seed=0, popsize=6, anchors=False, screening=False, progress=False)
    agent.search(problem, 12)
    assert max(calls) > 1 and sum(calls) == len(problem.archive)
    assert np.isclose(problem.spent, len(problem.archive))
