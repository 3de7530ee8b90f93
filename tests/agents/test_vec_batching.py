"""PPO's vector step (issue 18 item 2): the episodes that end in one step of 8 envs reach the
scorer as one batch, and that batch shares its path prefixes."""

from __future__ import annotations

import numpy as np

from agents.ppo.agent import PPOAgent
from tests.agents.conftest import backend_calls


def test_eight_envs_ending_together_are_scored_in_one_backend_call(fresh_problem):
    problem = fresh_problem()
    calls = backend_calls(problem)
    agent = PPOAgent(seed=0, n_envs=8, anchors=False, screening=False)
    venv = agent.make_train_env(problem)
    n_sources = len(venv.venv.envs[0].unwrapped.sources)
    venv.reset()
    # one merge and one first slot for all; eight different second slots, then STOP
    _, _, dones, _ = venv.step(np.array([[1, 0, 0, 2]] * 8))
    seconds = [[1, s % n_sources, s % 2, s // n_sources] for s in range(8)]
    _, _, dones, _ = venv.step(np.array(seconds))
    assert not dones.any() and calls == []
    _, _, dones, infos = venv.step(np.array([[1, n_sources, 0, 0]] * 8))
    assert dones.all()
    assert [c for c in calls if c] == [8], calls  # the whole vector step in one call
    assert len({info["recipe_hash"] for info in infos}) == 8
    assert problem.spent == 8 and len(problem.archive) == 8
    stats = problem.evaluator.prefix_cache.stats
    assert stats.slots_reused == 7 * stats.slots_run // 9  # the first slot ran once per batch
