"""PPOAgent and its offline phase on the tiny zoo: budget, pre-training, relabelling, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.ppo.agent import PPOAgent
from agents.ppo.encoder import PathEncoder
from agents.ppo.offline import (
    build_dataset,
    candidate_actions,
    front_relabel,
    policy_outputs,
    pretrain,
    relabel,
    trajectory_observations,
)
from merge_env.env import MergeEnv
from merge_env.errors import ConfigError
from merge_env.search.proposals import Candidate, propose_candidates
from merge_env.search.recipe import BASE, MERGED
from tests.agents.conftest import backend_calls

# small everything: the tiny zoo scores a recipe in a fraction of a second
FAST = dict(
    proposals=24, proposal_fraction=0.3, cheap_examples=4, n_preferences=32,
    bc_epochs=12, n_steps=16, batch_size=16, n_epochs=2, sweep_preferences=6,
    sil_epochs=2, sil_preferences=8,
)  # fmt: skip


@pytest.fixture
def problem(make_problem):
    return make_problem(cheap_examples=4)


@pytest.fixture(scope="module")
def runs(tiny_zoo, tmp_path_factory):
    """Two searches with the same seed, each on a fresh problem (own archive and cache)."""
    from merge_env.search.problem import build_problem
    from merge_env.search.recipe import BASE

    out = []
    for i in range(2):
        d = tmp_path_factory.mktemp(f"ppo-run-{i}")
        problem = build_problem(
            {BASE: tiny_zoo.base, **tiny_zoo.experts}, tiny_zoo.tasks, tiny_zoo.tokenizer_dir,
            archive_path=d / "archive.jsonl", cache_path=d / "cache.sqlite", cheap_examples=4,
        )  # fmt: skip
        agent = PPOAgent(seed=3, **FAST)
        archive = agent.search(problem, budget=12)
        out.append((agent, problem, archive))
    return out


@pytest.mark.parametrize("mode", ["free", "aligned"])
def test_env_checkers_pass(problem, mode):
    gym_check_env(MergeEnv(problem, mode=mode), skip_render_check=True)
    sb3_check_env(MergeEnv(problem, mode=mode), warn=True)


def test_budget_respected_exactly_and_archive_filled(runs):
    for agent, problem, archive in runs:
        assert 12 - 1 < problem.spent <= 12 + 1e-9
        assert len(archive) > 0
        assert all(e.evaluations <= 12 for e in archive)
        assert agent.offline["spent"] > 0  # the cheap phase was charged
        assert {e.source for e in archive} <= {"env", "ppo", "anchor"}
        # the framework's anchors, through the same service as every agent, charged first
        anchors = {r.hash for r in problem.anchor_recipes().values()}
        assert anchors <= {e.recipe_hash for e in archive if e.source == "anchor"}
        assert agent.phase_spend["anchors"] == len(anchors)
        cheap = [x for x in problem.ledger.path.read_text().splitlines() if '"cheap"' in x]
        assert cheap  # the offline candidates screened at the cheap fidelity (the service)


def test_stalled_search_still_spends_its_budget_on_new_recipes(problem):
    # a policy that gives up at the first repeat, and only 4 offline candidates to promote:
    # the rest of the budget goes to epsilon-uniform policy episodes, never to a repeat
    fast = {
        **FAST,
        "proposals": 4,
        "max_repeats": 1,
        "max_boosts": 0,  # no boost: the first repeat is a stall
        "lattice_steps": 1,
        "sweep_preferences": 3,
        "anchors": False,  # their 8 evaluations would leave nothing to explore
    }
    agent = PPOAgent(seed=0, **fast)
    archive = agent.search(problem, budget=10)
    assert 10 - 1 < problem.spent <= 10 + 1e-9
    assert agent.phase_spend["explore"] > 0
    assert sum(agent.phase_spend.values()) == pytest.approx(problem.spent)
    assert len({e.recipe_hash for e in archive}) == len(archive)


def test_same_seed_same_archive(runs):
    (_, _, a), (_, _, b) = runs
    assert [e.recipe_hash for e in a] == [e.recipe_hash for e in b]
    np.testing.assert_array_equal(a.score_matrix(), b.score_matrix())


def test_pretraining_lowers_imitation_and_value_losses(runs):
    history = runs[0][0].pretrain_history
    assert len(history) == FAST["bc_epochs"]
    assert history[-1]["imitation_loss"] < 0.5 * history[0]["imitation_loss"]
    assert history[-1]["value_loss"] < 0.5 * history[0]["value_loss"]


def test_saved_policy_reloads_and_acts_identically(runs, problem, tmp_path):
    agent = runs[0][0]
    path = agent.save_policy(tmp_path / "policy")
    assert path.is_file()
    again = PPOAgent(seed=99, pretrained=str(path), **FAST)
    model = again.build_model(again.make_env(problem))
    env = MergeEnv(problem)
    obs = [env.reset(seed=s)[0] for s in range(8)]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    a1, _ = agent.model.predict(batch, deterministic=True)
    a2, _ = model.predict(batch, deterministic=True)
    np.testing.assert_array_equal(a1, a2)
    fresh = PPOAgent(seed=99, **FAST).build_model(again.make_env(problem))
    p1 = agent.model.policy.state_dict()
    assert any(not torch.equal(p1[k], v) for k, v in fresh.policy.state_dict().items())


@pytest.mark.parametrize("kind", ["tchebycheff", "weighted_sum"])
def test_relabelling_matches_env_reward(problem, kind):
    env = MergeEnv(problem, scalarisation=kind, beta=0.05)
    rng = np.random.default_rng(0)
    vectors = rng.uniform(0, 1, (5, env.k))
    lengths = [env.L, 2, 7, 1, env.L]
    prefs = rng.dirichlet(np.ones(env.k), 4)
    rewards = relabel(env, vectors, lengths, prefs)
    assert rewards.shape == (4, 5)
    for i, pref in enumerate(prefs):
        env.reset(options={"preference": pref})
        for j, (v, n) in enumerate(zip(vectors, lengths)):
            assert rewards[i, j] == pytest.approx(env.reward_of(v, n), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", ["tchebycheff", "weighted_sum"])
def test_front_relabelling_matches_env_front_reward(problem, kind):
    env = MergeEnv(problem, scalarisation=kind, reward="front")
    env.reset(seed=0)
    # the archive to improve on: the plain merge, scored by an episode that STOPs at once
    _, _, done, _, info = env.step(env.encode_action(0, len(env.sources), 0, 0))
    assert done and len(problem.archive) == 1
    rng = np.random.default_rng(0)
    vectors = np.vstack([rng.uniform(0, 1, (5, env.k)), info["vector"]])
    prefs = rng.dirichlet(np.ones(env.k), 4)
    values = front_relabel(env, vectors, prefs)
    assert values.shape == (4, 6) and (values >= 0).all()
    assert (values[:, -1] == 0).all()  # the archived recipe's own score adds nothing
    assert (values > 0).any()
    for i, pref in enumerate(prefs):
        env.reset(options={"preference": pref})
        for j, v in enumerate(vectors):
            assert values[i, j] == pytest.approx(env.final_reward(v, 3), rel=1e-12, abs=1e-12)


def test_value_targets_can_differ_from_the_imitation_rewards(problem):
    env = MergeEnv(problem)
    rng = np.random.default_rng(0)
    cands = propose_candidates(env, 10, rng)
    prefs = rng.dirichlet(np.ones(env.k), 3)
    rewards = rng.uniform(0, 1, (3, len(cands)))
    plain = build_dataset(env, cands, rewards, prefs, np.random.default_rng(1), value_extra=1)
    values = rewards - 5.0
    data = build_dataset(env, cands, rewards, prefs, np.random.default_rng(1), 1, values)
    np.testing.assert_array_equal(data.actions, plain.actions)  # the same states imitated
    np.testing.assert_allclose(data.value, plain.value - 5.0, atol=1e-5)
    with pytest.raises(ConfigError, match="values"):
        build_dataset(env, cands, rewards, prefs, rng, 1, values[:2])


@pytest.mark.parametrize("mode", ["free", "aligned"])
def test_candidate_actions_rebuild_the_recipe(problem, mode):
    env = MergeEnv(problem, mode=mode, t_max=5 if mode == "free" else None)
    cands = propose_candidates(env, len(env.merges) + 12, np.random.default_rng(1))
    assert len({c.recipe(env).hash for c in cands}) == len(cands)
    if mode == "free":
        assert Candidate(0) in cands  # STOP at once: the plain parameter merge
    pref = np.full(env.k, 1.0 / env.k)
    for cand in [cands[0], cands[-1]]:
        actions, mask = candidate_actions(env, cand)
        assert mask.shape == actions.shape and mask[0, :2].all()
        scratch = MergeEnv(problem, mode=mode, t_max=env.t_max)
        expected = trajectory_observations(scratch, actions, pref)
        obs, _ = env.reset(options={"preference": pref})
        for t, a in enumerate(actions):
            for key in obs:
                np.testing.assert_array_equal(obs[key], expected[t][key])
            obs, _, done, _, info = env.step(a)
        assert done and info["recipe_hash"] == cand.recipe(env).hash
        assert info["length"] == cand.length(env)


def test_more_plain_merges_than_proposals_give_a_seeded_random_subset(problem):
    # e.g. recycling 7 checkpoints: 924 lattice merges in sixths, 180 proposals. The lattice's
    # first n would leave the last sources at weight zero and be the same for every seed.
    env = MergeEnv(problem)
    n = len(env.merges) // 3

    def picked(seed):
        return [c.merge for c in propose_candidates(env, n, np.random.default_rng(seed))]

    first, again, other = picked(0), picked(0), picked(1)
    assert first == again and len(set(first)) == n and all(not c.slots for c in
        propose_candidates(env, n, np.random.default_rng(0)))  # fmt: skip
    assert set(first) != set(other)  # the seed matters
    assert max(first) >= n  # not the lattice's first corner


def test_proposals_draw_nothing_for_the_plain_merges_when_all_fit(problem):
    # the zoo's main jobs (28 merges, 200 proposals) keep the proposals they always had
    env = MergeEnv(problem)
    rng, untouched = np.random.default_rng(5), np.random.default_rng(5)
    head = [c for c in propose_candidates(env, len(env.merges), rng)]
    assert head == [Candidate(m) for m in range(len(env.merges))]
    assert rng.bit_generator.state == untouched.bit_generator.state


def test_candidates_hold_the_anchors_and_interleave_merge_and_base(problem):
    env = MergeEnv(problem)
    cands = propose_candidates(env, 80, np.random.default_rng(0))
    hashes = {c.recipe(env).hash for c in cands}
    assert len(hashes) == len(cands) == 80
    for m in range(len(env.merges)):
        assert Candidate(m) in cands  # every plain parameter merge
    for source in env.sources[1:]:  # every pool model alone (base, each fine-tune)
        assert any(c.slots and {s.source for s in c.slots} == {source} for c in cands)
    mixed = [c for c in cands if {MERGED, BASE} <= {s.source for s in c.slots}]
    assert len(mixed) >= 10  # layers of a merge and of the base in one path (tiny zoo: 2 layers)


def _mean_entropy(policy, data):
    obs = {k: torch.as_tensor(v) for k, v in data.obs.items()}
    with torch.no_grad():
        _, entropy, _ = policy_outputs(policy, obs, torch.as_tensor(data.actions))
    mask = torch.as_tensor(data.mask, dtype=torch.float32)
    rows = torch.as_tensor(data.imitate, dtype=torch.float32)
    return float(((entropy * mask).sum(1) * rows).sum() / rows.sum())


def test_entropy_bonus_keeps_the_cloned_policy_stochastic(problem):
    env = MergeEnv(problem)
    rng = np.random.default_rng(0)
    cands = propose_candidates(env, 30, rng)
    prefs = rng.dirichlet(np.ones(env.k), 16)
    rewards = rng.uniform(-1, 0, (len(prefs), len(cands)))  # no scoring needed to clone
    data = build_dataset(env, cands, rewards, prefs, rng, value_extra=0)
    out = {}
    for coef in (0.0, 0.5):
        agent = PPOAgent(seed=0, **FAST)
        model = agent.build_model(agent.make_env(problem))
        before = _mean_entropy(model.policy, data)
        hist = pretrain(model.policy, data, epochs=15, lr=3e-3, batch_size=64, ent_coef=coef,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
        assert hist[-1]["imitation_loss"] < hist[0]["imitation_loss"]
        out[coef] = (before, _mean_entropy(model.policy, data))
    assert out[0.0][0] == pytest.approx(out[0.5][0])  # same seed, same start
    assert out[0.0][1] < out[0.0][0]  # cloning alone sharpens the policy
    assert out[0.5][1] > out[0.0][1] + 0.1  # the bonus keeps it from collapsing


def test_path_encoder_ignores_empty_rows(problem):
    env = MergeEnv(problem)
    enc = PathEncoder(env.observation_space)
    from stable_baselines3.common.preprocessing import preprocess_obs

    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(np.array([0, 1, 1, 2]))
    batch = {k: torch.as_tensor(np.asarray(v))[None] for k, v in obs.items()}
    f1 = enc(preprocess_obs(batch, env.observation_space))
    batch["path"][0, -1] = torch.tensor([0.0, 2.0, 3.0])  # garbage in an empty row
    f2 = enc(preprocess_obs(batch, env.observation_space))
    assert f1.shape == (1, enc.features_dim)
    torch.testing.assert_close(f1, f2)
    batch["path"][0, 0, 1] = 2.0  # a different layer in the filled slot changes the feature
    assert not torch.allclose(f1, enc(preprocess_obs(batch, env.observation_space)))


def test_parameter_level_only_never_builds_a_path(problem):
    agent = PPOAgent(seed=0, level="param", **FAST)
    archive = agent.search(problem, budget=6)
    assert len(archive) > 0
    assert all(e.recipe["path"] is None for e in archive)
    assert problem.spent <= 6 + 1e-9


def test_vectorised_ppo_scores_episodes_in_batches_within_budget(make_problem):
    """n_envs=3: finished episodes' recipes reach the back-end together; the budget holds."""
    problem = make_problem(cheap_examples=4)
    calls = backend_calls(problem)
    agent = PPOAgent(seed=0, n_envs=3, **{**FAST, "proposals": 0, "sweep_fraction": 0.0})
    agent.search(problem, budget=10)
    assert problem.spent <= 10 + 1e-9
    assert len(problem.archive) > 0
    assert max(calls) > 1, f"never more than one recipe per back-end call: {calls}"


def test_deferred_env_reward_equals_direct_reward(make_problem):
    """A deferred episode scored by the batching VecEnv earns what the plain env pays."""
    from agents.ppo.vec_env import batch_scoring_env

    problem = make_problem()
    direct = MergeEnv(problem, preference=[0.5, 0.3, 0.2])
    action = np.array([1, 0, 0, 2])  # merged source, layer 0, then STOP
    stop = np.array([1, len(direct.sources), 0, 0])
    direct.reset(seed=0)
    direct.step(action)
    _, r_direct, _, _, info_direct = direct.step(stop)
    vec = batch_scoring_env(
        lambda: MergeEnv(problem, preference=[0.5, 0.3, 0.2], defer_scoring=True), 2, problem, 0.0
    )
    vec.reset()
    vec.step(np.stack([action, action]))
    _, rewards, dones, infos = vec.step(np.stack([stop, stop]))
    assert dones.all()
    assert rewards[0] == pytest.approx(r_direct) and rewards[1] == pytest.approx(r_direct)
    assert infos[0]["recipe_hash"] == info_direct["recipe_hash"]
    assert "pending" not in infos[0]


def test_promoted_proposals_reach_the_archive_in_full(make_problem):
    """promote_proposals: the best screen_keep share of the cheaply scored proposals is scored in
    full in the offline phase (as the genome agents' screening service does), charged there."""
    spent = {}
    for promote in (False, True):
        problem = make_problem(cheap_examples=4)
        fast = {**FAST, "sweep_fraction": 0.0}
        agent = PPOAgent(seed=0, promote_proposals=promote, **fast)
        agent.search(problem, budget=20)
        n = len(agent.offline["candidates"])
        recipes = {
            c.recipe(agent.make_env(problem).unwrapped).hash for c in agent.offline["candidates"]
        }
        full = [e for e in problem.archive if e.source == "ppo" and e.recipe_hash in recipes]
        spent[promote] = agent.phase_spend["offline"]
        assert (1 <= len(full) <= agent._keep(n)) if promote else not full
    assert spent[True] > spent[False]
