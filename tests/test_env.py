"""MergeEnv: Gymnasium and SB3 env checkers, episodes, rewards, registration, MO variant."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from merge_env.env import MergeEnv, MOMergeEnv, weight_lattice
from merge_env.errors import ConfigError
from merge_env.registration import ENV_ID, MO_ENV_ID


@pytest.fixture
def problem(make_problem):
    return make_problem()


@pytest.mark.parametrize("mode", ["free", "aligned"])
def test_env_checkers_pass(problem, mode):
    env = MergeEnv(problem, mode=mode)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(MergeEnv(problem, mode=mode), warn=True)


def test_stop_first_is_the_parameter_merge_and_reward_matches(problem):
    env = MergeEnv(problem, preference=[1, 0, 0][: len(problem.objectives)] or None)
    env.reset(seed=0)
    stop = len(env.sources)
    _, reward, term, trunc, info = env.step(np.array([2, stop, 0, 0]))
    assert term and not trunc
    recipe = info["recipe"]
    assert recipe.path is None and recipe.merge == env.merges[2]
    direct = problem.score(recipe, record=False)
    np.testing.assert_array_equal(direct.vector, info["vector"])
    assert reward == pytest.approx(env.reward_of(info["vector"], problem.pool.num_layers))


def test_identity_path_scores_as_the_parameter_merge(problem):
    env = MergeEnv(problem, mode="aligned")
    env.reset(seed=0)
    merged = env.sources.index("merged")
    one = env.coefficients.index(1.0)
    for _ in range(env.L):
        _, _, term, _, info = env.step(np.array([1, merged, one]))
    assert term
    plain = problem.score(info["recipe"].__class__(merge=env.merges[1]), record=False)
    np.testing.assert_array_equal(plain.vector, info["vector"])


def test_free_episode_ends_at_t_max_and_records(problem):
    env = MergeEnv(problem, t_max=3)
    env.reset(seed=1)
    n_before = len(problem.archive)
    for t in range(3):
        obs, reward, term, _, info = env.step(np.array([0, 1, t % env.L, 2]))
        assert obs["position"] == t + 1
    assert term and info["length"] == 3
    assert len(problem.archive) == n_before + 1
    assert problem.archive.get(info["recipe_hash"]) is not None


def test_preferences_seeded_and_fixed(problem):
    env = MergeEnv(problem)
    a = env.reset(seed=3)[0]["preference"]
    b = env.reset(seed=3)[0]["preference"]
    np.testing.assert_array_equal(a, b)
    assert a.sum() == pytest.approx(1.0, abs=1e-6)
    k = len(problem.objectives)
    fixed = env.reset(options={"preference": [1.0] * k})[0]["preference"]
    np.testing.assert_allclose(fixed, np.full(k, 1.0 / k), rtol=1e-6)
    with pytest.raises(ConfigError, match="preference"):
        env.reset(options={"preference": [1.0]})


def test_mo_variant_returns_vector_reward(problem):
    env = MOMergeEnv(problem)
    assert env.reward_space.shape == (len(problem.objectives),)
    env.reset(seed=0)
    _, r, term, _, info = env.step(np.array([0, len(env.sources), 0, 0]))
    assert term and r.shape == (len(problem.objectives),)
    np.testing.assert_allclose(r, problem.normalised(info["vector"]) - env.beta, rtol=1e-5)


def test_registered_with_kwargs(problem):
    env = gym.make(ENV_ID, problem=problem, mode="aligned")
    assert isinstance(env.unwrapped, MergeEnv) and env.unwrapped.mode == "aligned"


def test_mo_variant_made_by_id_steps_without_checker_warnings(problem):
    # Gymnasium's passive checker wants a float reward; the MO spec turns it off, MO-Gymnasium style
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make(MO_ENV_ID, problem=problem)
        env.reset(seed=0)
        for _ in range(3):
            _, reward, term, trunc, _ = env.step(env.action_space.sample())
            assert np.shape(reward) == (len(problem.objectives),)
            if term or trunc:
                env.reset()
    assert gym.spec(MO_ENV_ID).disable_env_checker


def test_fixed_merge_is_the_uniform_simplex_merge(problem):
    env = MergeEnv(problem, param_mode="fixed")
    (merge,) = env.merges
    weights = [m.parameters["weight"] for m in merge.models]
    k = len(problem.pool.experts)
    assert weights == pytest.approx([1.0 / k] * k)  # as the flat genome's level="arch"


def test_lattice_and_bad_config(problem):
    assert len(weight_lattice(3, 3)) == 10
    assert all(abs(sum(w) - 1) < 1e-9 for w in weight_lattice(3, 3))
    with pytest.raises(ConfigError, match="env.mode"):
        MergeEnv(problem, mode="diagonal")
    with pytest.raises(ConfigError, match="1.0"):
        MergeEnv(problem, coefficients=[0.5, 2.0])
    # a library user skipping Hydra's config check gets the same refusal
    with pytest.raises(ConfigError, match="env.lattice_steps"):
        MergeEnv(problem, lattice_steps=0)
