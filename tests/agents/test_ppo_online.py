"""Issue 15 on the tiny zoo: online PPO that learns, the front-building reward, continuous merge
weights, the stall handled by the policy, and a checkpointed run that resumes where it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from agents.ppo.agent import PPOAgent
from agents.ppo.callbacks import BudgetCallback
from agents.ppo.offline import candidate_actions
from agents.ppo.vec_env import batch_scoring_env
from merge_env.env import MergeEnv
from merge_env.errors import ConfigError
from merge_env.search.proposals import Candidate
from merge_env.search.recipe import Slot

FAST = dict(
    proposals=16, proposal_fraction=0.3, cheap_examples=4, n_preferences=32,
    bc_epochs=8, n_steps=8, batch_size=8, n_epochs=2, sweep_preferences=3, anchors=False,
    progress=False, sil_epochs=2, sil_preferences=8,
)  # fmt: skip


@pytest.fixture
def problem(make_problem):
    return make_problem(cheap_examples=4)


def _params(policy) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in policy.state_dict().items()}


# -- online learning ---------------------------------------------------------------------------
def test_online_phase_trains_on_the_partial_rollout_and_moves_the_pretrained_weights(problem):
    # one rollout (n_steps=512) is far more than the budget pays for: SB3's own learn() would
    # stop inside it and never train; the online phase must train on what it collected
    agent = PPOAgent(seed=0, **{**FAST, "n_steps": 512, "batch_size": 16, "sweep_fraction": 0.0})
    snapshot = {}
    pretrain = agent.pretrain_offline

    def spy(problem, budget):
        pretrain(problem, budget)
        snapshot.update(_params(agent.model.policy))

    agent.pretrain_offline = spy
    agent.search(problem, budget=8)
    assert snapshot, "the offline phase did not pre-train"
    assert agent.phase_spend["online"] > 0
    stats = agent.online_stats
    assert stats["partial_trainings"] >= 1 and stats["updates"] > 0
    # n_epochs passes over minibatches of batch_size: the count of optimiser steps
    first = stats["history"][0]
    assert first["rollout_updates"] == 2 * np.ceil(first["transitions"] / 16)
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert np.isfinite(stats[key])
    after = agent.model.policy.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in snapshot.items())


def test_self_imitation_relabels_the_archive_and_imitates_it_after_every_training(problem):
    agent = PPOAgent(seed=0, **{**FAST, "sweep_fraction": 0.0})
    calls = []
    imitate = agent.self_imitate

    def spy():
        before = _params(agent.model.policy)
        out = imitate()
        calls.append((before, _params(agent.model.policy), out, len(problem.archive)))
        return out

    agent.self_imitate = spy  # build_model hands the model this attribute
    agent.search(problem, budget=10)
    stats = agent.online_stats
    assert stats["trainings"] >= 1 and len(calls) == stats["trainings"]
    before, after, out, archived = calls[-1]
    assert any(not torch.equal(after[k], v) for k, v in before.items())  # it trained the policy
    # the offline candidates and the archive's env-expressible recipes, each once
    assert len(agent.offline["candidates"]) <= out["sil_recipes"]
    assert out["sil_recipes"] <= len(agent.offline["candidates"]) + archived
    assert np.isfinite(out["sil_imitation_loss"]) and np.isfinite(out["sil_value_loss"])
    assert "sil_imitation_loss" in stats["history"][-1]
    # PPO's own optimiser steps are counted apart from the imitation's
    assert stats["updates"] == sum(r["rollout_updates"] for r in stats["history"])


def test_online_only_self_imitation_never_reads_the_cheap_offline_scores(problem):
    agent = PPOAgent(seed=0, **{**FAST, "bc_epochs": 0, "sil_offline": False})
    seen = []
    imitate = agent.self_imitate
    agent.self_imitate = lambda: seen.append((imitate(), len(problem.archive))) or seen[-1][0]
    agent.search(problem, budget=10)
    assert agent.offline and seen  # the proposals were screened, and imitation ran
    for out, archived in seen:
        assert 0 < out["sil_recipes"] <= archived


def test_self_imitation_reads_archived_recipes_back_as_env_candidates(problem):
    from agents.ppo.agent import _as_candidate
    from merge_env.search.recipe import Recipe

    env = MergeEnv(problem, t_max=3)
    cand = Candidate(4, (Slot(env.sources[1], 0, 0.75), Slot(env.sources[0], 1, 1.0)))
    back = _as_candidate(env, cand.recipe(env).to_dict())
    assert back == cand and back.recipe(env).hash == cand.recipe(env).hash
    assert _as_candidate(env, Candidate(2).recipe(env).to_dict()) == Candidate(2)
    # what the env cannot build: a single pool model, a scale off its coefficients
    assert _as_candidate(env, Recipe.single(env.sources[1]).to_dict()) is None
    odd = Candidate(4, (Slot(env.sources[1], 0, 0.6),)).recipe(env).to_dict()
    assert _as_candidate(env, odd) is None


def test_offline_only_ablation_spends_online_but_never_updates(problem):
    agent = PPOAgent(seed=0, online_learning=False, **FAST)
    agent.search(problem, budget=8)
    assert agent.phase_spend["online"] > 0
    assert agent.online_stats["updates"] == 0 and agent.online_stats["history"] == []


def test_preference_changes_the_policys_actions(problem):
    # the best recipe differs by preference (plain merge 0, 5 or 9 by the dominant task): the
    # pre-trained policy acts on the preference it is given, not on the path alone
    from agents.ppo.offline import build_dataset, pretrain
    from merge_env.search.proposals import propose_candidates

    env = MergeEnv(problem)
    rng = np.random.default_rng(0)
    cands = [Candidate(0), Candidate(5), Candidate(9)]
    cands += [c for c in propose_candidates(env, 20, rng) if c not in cands]
    prefs = rng.dirichlet(np.ones(env.k), 48)
    rewards = np.zeros((len(prefs), len(cands)))
    rewards[np.arange(len(prefs)), prefs.argmax(1)] = 1.0
    data = build_dataset(env, cands, rewards, prefs, rng, value_extra=0)
    agent = PPOAgent(seed=0, **FAST)
    model = agent.build_model(agent.make_train_env(problem))
    pretrain(model.policy, data, epochs=150, lr=3e-3, batch_size=16,
             generator=torch.Generator().manual_seed(0))  # fmt: skip
    obs = [env.reset(options={"preference": p})[0] for p in np.eye(env.k) * 0.8 + 0.2 / env.k]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    actions, _ = model.predict(batch, deterministic=True)
    assert [int(a[0]) for a in actions] == [0, 5, 9], actions


# -- the front-building reward -----------------------------------------------------------------
def _episode(env, actions, pref):
    env.reset(options={"preference": pref})
    for a in actions:
        _, reward, done, _, info = env.step(a)
    assert done
    return reward, info


def test_a_repeated_recipe_earns_nothing_under_the_front_reward(problem):
    pref = np.array([0.5, 0.3, 0.2])
    env = MergeEnv(problem, reward="front")
    actions = [np.array([1, 0, 0, 2]), np.array([1, len(env.sources), 0, 0])]
    first, info = _episode(env, actions, pref)
    assert not info["cached"] and first >= 0.0
    # its gain is its value over the archive's best before it (empty archive: the nadir)
    f = problem.normalised(info["vector"])
    assert first == pytest.approx(-np.max(pref * (1 - f)) + np.max(pref), abs=1e-9)
    again, info = _episode(env, actions, pref)
    assert info["cached"] and again == 0.0
    # cached but never archived (scored outside the search): still a repeat, still nothing
    other = [np.array([2, 1, 1, 2]), actions[1]]
    env.reset(options={"preference": pref})
    env.step(other[0])
    problem.score(env.recipe(), record=False)
    assert problem.archive.get(env.recipe().hash) is None
    reward, info = _episode(env, other, pref)
    assert info["cached"] and reward == 0.0
    # the plain scalarised reward pays the repeat what it paid the first time
    scalar = MergeEnv(problem, reward="scalar")
    r1, _ = _episode(scalar, actions, pref)
    assert r1 != 0.0 and _episode(scalar, actions, pref)[0] == r1
    # a new recipe never earns less than a repeat, and one that adds nothing earns 0
    for layer in (0, 1):
        reward, info = _episode(env, [np.array([0, 2, layer, 0]), actions[1]], pref)
        assert not info["cached"] and reward >= 0.0
        best = max(env.reward_of(e.vector(problem.objectives), 0, pref) for e in problem.archive)
        assert reward == 0.0 or env.reward_of(info["vector"], 0, pref) == pytest.approx(best)


def test_beating_the_best_single_model_never_lowers_the_reward(problem):
    # z* is the best single model per task; merges can beat it, and must not be paid less for it
    pref = np.array([0.5, 0.3, 0.2])
    z = np.asarray(problem.ideal, float)
    above = z.copy()
    above[0] += 0.1 * max(abs(z[0]), 1e-3)  # beats z* on one task, equal on the others
    higher = z + 0.1 * np.maximum(np.abs(z), 1e-3)  # beats it on every task
    env = MergeEnv(problem)
    at_z = env.reward_of(z, 0, pref)
    assert env.reward_of(above, 0, pref) >= at_z
    assert env.reward_of(higher, 0, pref) > at_z
    # the front reward, with z* the archive's best so far: a merge beating it everywhere earns
    front = MergeEnv(problem, reward="front")
    assert front.final_reward(higher, 0, pref, best=at_z) > 0.0


def test_batched_front_reward_zero_for_repeats_within_a_batch(problem):
    vec = batch_scoring_env(
        lambda: MergeEnv(problem, preference=[0.4, 0.3, 0.3], defer_scoring=True, reward="front"),
        2, problem, 0.0,
    )  # fmt: skip
    vec.reset()
    stop = np.array([0, 5, 0, 0])
    _, rewards, dones, infos = vec.step(np.stack([stop, stop]))
    assert dones.all() and not infos[0]["cached"] and infos[1]["cached"]
    assert rewards[0] > 0.0 and rewards[1] == 0.0


def test_bad_reward_or_weights_is_one_config_error(problem):
    with pytest.raises(ConfigError, match="env.reward"):
        MergeEnv(problem, reward="hv")
    with pytest.raises(ConfigError, match="env.weights"):
        MergeEnv(problem, weights="box")
    with pytest.raises(ConfigError, match="env.weights=simplex"):
        MergeEnv(problem, weights="simplex", param_mode="preference")


# -- continuous merge weights ------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["free", "aligned"])
def test_env_checkers_pass_with_continuous_weights(problem, mode):
    gym_check_env(MergeEnv(problem, mode=mode, weights="simplex"), skip_render_check=True)
    sb3_check_env(MergeEnv(problem, mode=mode, weights="simplex"), warn=True)


def test_continuous_weights_make_valid_recipes_that_hash_consistently(problem):
    env = MergeEnv(problem, weights="simplex", reward="front")
    lattice = MergeEnv(problem)
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    hashes = set()
    for _ in range(20):
        env.reset(seed=int(rng.integers(1000)))
        done = False
        while not done:
            _, _, done, _, info = env.step(env.action_space.sample())
        hashes.add(info["recipe_hash"])
        w = np.array([m.parameters["weight"] for m in info["recipe"].merge.models])
        assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
        np.testing.assert_allclose(w * env.weight_steps, np.round(w * env.weight_steps), atol=1e-6)
    assert len(hashes) > 10  # off the 28-point lattice: almost every merge is new
    # every lattice merge is one action away, with the lattice env's hash (same cache entry)
    for m in (0, 3, len(lattice.merges) - 1):
        cand = Candidate(m)
        actions, mask = candidate_actions(env, cand)
        assert mask[0, : env.n_experts].all() and not mask[0, -2:].any()
        was = problem.is_cached(cand.recipe(lattice))
        _, info = _episode(env, actions, np.full(env.k, 1 / 3))
        assert info["recipe_hash"] == cand.recipe(lattice).hash and info["cached"] == was
    # a scored continuous recipe comes back from the cache under the same hash
    _, first = _episode(env, [np.array([0.3, -0.2, 0.9, 0.99, 0.0, 0.0], np.float32)], None)
    _, second = _episode(env, [np.array([0.3, -0.2, 0.9, 0.99, 0.0, 0.0], np.float32)], None)
    assert first["recipe_hash"] == second["recipe_hash"] and second["cached"]


def test_ppo_searches_with_continuous_weights(problem):
    agent = PPOAgent(seed=0, weights="simplex", **FAST)
    archive = agent.search(problem, budget=8)
    assert problem.spent <= 8 + 1e-9 and agent.online_stats["updates"] > 0
    assert any(e.source == "env" for e in archive)  # the policy's own episodes were scored


# -- the stall is the policy's -----------------------------------------------------------------
def _stall_model(problem, weights: str = "lattice"):
    agent = PPOAgent(seed=0, weights=weights, **FAST)
    model = agent.build_model(agent.make_train_env(problem))
    model.ent_coef = 0.01
    return model


def _entropy(model, problem, weights: str = "lattice") -> float:
    env = MergeEnv(problem, weights=weights)
    obs = [env.reset(seed=i)[0] for i in range(8)]
    batch = {k: torch.as_tensor(np.stack([o[k] for o in obs])) for k in obs[0]}
    with torch.no_grad():
        return float(model.policy.get_distribution(model.policy.obs_to_tensor(batch)[0])
                     .entropy().mean())  # fmt: skip


def test_a_stall_tempers_the_policy_and_raises_the_entropy_bonus_before_giving_up(problem):
    from merge_env.search.budget import Budget

    cb = BudgetCallback(Budget(problem, 10), max_repeats=2, boost=2.0, max_boosts=2,
                        base_ent_coef=0.01, temper=2.0)  # fmt: skip
    cb.model = model = _stall_model(problem)
    w0 = model.policy.action_net.weight.detach().clone()
    h0 = _entropy(model, problem)
    cb._count(True)
    assert model.ent_coef == pytest.approx(0.01)  # one repeat is not a stall yet
    cb._count(True)
    assert model.ent_coef == pytest.approx(0.02) and not cb.stalled
    # the logits halved at once: a flatter policy, no gradient step needed
    assert torch.allclose(model.policy.action_net.weight, w0 / 2)
    assert _entropy(model, problem) > h0
    cb._count(False)  # a new recipe: back to the base bonus (the tempering stays)
    assert model.ent_coef == pytest.approx(0.01) and cb.repeats == 0
    assert torch.allclose(model.policy.action_net.weight, w0 / 2)
    for _ in range(6):
        cb._count(True)
    assert cb.total_boosts == 3 and cb.stalled
    assert torch.allclose(model.policy.action_net.weight, w0 / 8)


def test_temper_one_leaves_the_policy_as_it_was(problem):
    from merge_env.search.budget import Budget

    cb = BudgetCallback(Budget(problem, 10), max_repeats=1, max_boosts=1, base_ent_coef=0.01)
    cb.model = model = _stall_model(problem)
    before = _params(model.policy)
    cb._count(True)
    assert cb.total_boosts == 1 and model.ent_coef == pytest.approx(0.02)
    assert all(torch.equal(v, before[k]) for k, v in _params(model.policy).items())


def test_tempering_a_continuous_policy_widens_its_gaussian(problem):
    from agents.ppo.callbacks import temper_policy

    model = _stall_model(problem, "simplex")
    std = model.policy.log_std.detach().exp().clone()
    h0 = _entropy(model, problem, "simplex")
    temper_policy(model.policy, 2.0)
    assert torch.allclose(model.policy.log_std.detach().exp(), 2 * std)
    assert _entropy(model, problem, "simplex") > h0
    with pytest.raises(ConfigError, match="temper"):
        temper_policy(model.policy, 0.5)
    with pytest.raises(ConfigError, match="agent.temper"):
        PPOAgent(temper=0.5)


def test_fallbacks_are_bounded_after_a_stall(problem, monkeypatch):
    # a policy that gives up at once (every episode counted as a repeat, whatever the pool):
    # promote may take at most fallback_fraction of the budget
    count = BudgetCallback._count
    monkeypatch.setattr(BudgetCallback, "_count", lambda self, cached: count(self, True))
    agent = PPOAgent(seed=0, **{**FAST, "max_repeats": 1, "max_boosts": 0, "lattice_steps": 1,
                                "fallback_fraction": 0.1})  # fmt: skip
    agent.search(problem, budget=10)
    assert agent.stalled
    assert agent.phase_spend["promote"] <= 1.0 + 1e-9
    assert sum(agent.phase_spend.values()) == pytest.approx(problem.spent)


# -- checkpoint and resume ---------------------------------------------------------------------
class _Kill(BaseCallback):
    """Raises at the n-th rollout start (after the checkpoint callback saved it): a kill."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.seen = n, 0

    def _on_rollout_start(self) -> None:
        self.seen += 1
        if self.seen == self.n:
            raise KeyboardInterrupt("killed")

    def _on_step(self) -> bool:
        return True


def _ledger_keys(problem) -> list[str]:
    return [json.loads(x)["key"] + json.loads(x)["fidelity"]
            for x in problem.ledger.path.read_text().splitlines() if x.strip()]  # fmt: skip


def test_a_killed_run_resumes_from_its_checkpoint(make_problem, tmp_path):
    budget = 40
    cfg = {**FAST, "anchors": True}
    whole = make_problem(cheap_examples=4)
    a = PPOAgent(seed=1, **cfg)
    a.workdir = tmp_path / "whole"
    a.search(whole, budget)
    assert a.online_stats["trainings"] >= 8, a.online_stats

    d = tmp_path / "killed"
    d.mkdir()
    paths = dict(archive_path=d / "archive.jsonl", cache_path=d / "cache.sqlite")
    killed = make_problem(cheap_examples=4, **paths)
    b = PPOAgent(seed=1, **cfg)
    b.workdir = d / "agent"
    b.extra_callbacks = [_Kill(6)]
    with pytest.raises(KeyboardInterrupt):
        b.search(killed, budget)
    assert b.phase.startswith("online") and 0 < b.model.updates < a.online_stats["updates"]
    spent = killed.spent
    killed.evaluator.cache.close()

    again = make_problem(cheap_examples=4, **paths)  # a new process: same files
    c = PPOAgent(seed=1, **cfg)
    c.workdir = d / "agent"
    c.search(again, budget - spent)  # what experiments/run.py passes on resume
    assert c.online_stats["updates"] == a.online_stats["updates"]
    assert c.online_stats["trainings"] == a.online_stats["trainings"]
    keys = _ledger_keys(again)
    assert len(keys) == len(set(keys)), "a recipe was charged twice"
    assert [e.recipe_hash for e in again.archive] == [e.recipe_hash for e in whole.archive]
    assert again.spent == pytest.approx(whole.spent)
    assert c.phase_spend == pytest.approx(a.phase_spend)


def test_full_and_offline_only_share_a_seeds_offline_phase(make_problem):
    """The pairing behind ablate_ppo's signed-rank test: with one search seed, full and
    offline_only score the same recipes and pre-train the same weights, and part at the online
    phase (which offline_only runs without updates)."""
    seen = []
    for online in (True, False):
        problem = make_problem(cheap_examples=4)
        agent = PPOAgent(seed=3, online_learning=online, **{**FAST, "sweep_fraction": 0.0})
        pretrain = agent.pretrain_offline

        def spy(problem, budget, _pretrain=pretrain, _agent=agent):
            _pretrain(problem, budget)
            env, cands = _agent.make_env(problem).unwrapped, _agent.offline["candidates"]
            scored = ([c.recipe(env).hash for c in cands],
                      _agent.offline["vectors"].tolist())  # fmt: skip
            seen.append((scored, _params(_agent.model.policy)))

        agent.pretrain_offline = spy
        agent.search(problem, budget=10)
        seen[-1] += (agent.online_stats["updates"],)
    (full_scored, full_weights, full_updates), (off_scored, off_weights, off_updates) = seen
    assert full_scored[0] and full_scored == off_scored
    assert full_weights.keys() == off_weights.keys()
    assert all(torch.equal(full_weights[k], off_weights[k]) for k in full_weights)
    assert full_updates > 0 and off_updates == 0
