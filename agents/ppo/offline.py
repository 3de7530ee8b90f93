"""HM3's offline phase: candidate paths, the recipe <-> action codec, relabelling, pre-training.

HM3 (DESIGN §1.1) scores many candidate inference paths once on a cheap subset of the data, then
pre-trains the policy by imitating the best path for each sampled preference and the value net by
regressing the scalarised reward. A scored path carries its whole score vector, so the scalarised
reward of *every* preference is known for free (hindsight relabelling, as in HER: Andrychowicz
et al., NeurIPS 2017). Scoring goes through the framework's services (agents/base.py:
``Agent.score_cheap``, ``Agent.promotion_order``), as for every agent; the framework's anchors (each
pool model as it is, the references' plain merges) are seeded there too, outside this module.
Candidates come from the framework's proposal distribution (merge_env/search/proposals.py), which
every agent may screen (``proposals``); they are all expressible as env actions, so the policy can
imitate them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy

from merge_env.env import MergeEnv
from merge_env.errors import ConfigError
from merge_env.search.pareto import scalarise
from merge_env.search.proposals import Candidate

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- codec
def candidate_actions(env: MergeEnv, cand: Candidate) -> tuple[np.ndarray, np.ndarray]:
    """The env's action sequence for a candidate, and a mask of the components the env reads.

    Returns ``(actions, mask)``, both (n_steps, n_components); the merge components (one lattice
    index, or K continuous weights with ``weights="simplex"``) only count at step 0, and a STOP
    only reads the source component.
    """
    # outside "policy" mode the env ignores the choice (one category), so it is always 0
    choice = cand.merge if env.param_mode == "policy" else 0
    n_src, d = len(env.sources), env.merge_dims
    rows, masks = [], []
    for t, slot in enumerate(cand.slots):
        if slot.source not in env.sources:
            raise ConfigError(f"candidate slot {t}: unknown source {slot.source!r}")
        if env.mode == "aligned" and slot.layer != t:
            raise ConfigError(f"aligned mode: slot {t} takes layer {slot.layer}, not {t}")
        level = _level(env, slot.scale)
        rows.append(env.encode_action(choice, env.sources.index(slot.source), slot.layer, level))
        masks.append([t == 0] * d + [True] * len(env.path_sizes))
    if env.mode == "free" and len(cand.slots) < env.t_max:
        rows.append(env.encode_action(choice, n_src, 0, 0))
        masks.append([not cand.slots] * d + [True, False, False])
    if env.mode == "aligned" and len(cand.slots) != env.L:
        raise ConfigError(f"aligned mode: a path has exactly {env.L} slots, got {len(cand.slots)}")
    return np.stack(rows), np.asarray(masks, bool)


def _level(env: MergeEnv, scale: float) -> int:
    for i, c in enumerate(env.coefficients):
        if abs(c - scale) < 1e-9:
            return i
    raise ConfigError(f"scale {scale} is not one of the env's coefficients {env.coefficients}")


def trajectory_observations(
    env: MergeEnv, actions: np.ndarray, preference: np.ndarray
) -> list[dict[str, np.ndarray]]:
    """Observations seen before each action; the last (scoring) action is never taken.

    ``env`` must be a scratch env: its episode state is overwritten.
    """
    obs, _ = env.reset(options={"preference": preference})
    out = [obs]
    for a in actions[:-1]:
        obs, _, terminated, _, _ = env.step(a)
        if terminated:
            raise ConfigError(f"action sequence ends early at {a.tolist()}")
        out.append(obs)
    return out


# ----------------------------------------------------------------------------- relabelling
def relabel(
    env: MergeEnv, vectors: np.ndarray, lengths: Sequence[int], preferences: np.ndarray
) -> np.ndarray:
    """Rewards (n_preferences, n_candidates): what the env pays each candidate under each preference.

    The same formula as ``MergeEnv.reward_of`` (scalarised normalised score minus the length
    penalty), broadcast over every (preference, candidate) pair.
    """
    values = _scalarised(env, vectors, preferences)
    return values - env.beta * np.asarray(lengths, float)[None, :] / env.L


def front_relabel(env: MergeEnv, vectors: np.ndarray, preferences: np.ndarray) -> np.ndarray:
    """Rewards (n_preferences, n_candidates) under ``reward="front"``: what each candidate would
    add to the env's archive as it is now, for each preference, ``max(0, s(f) - max_a s(f_a))``
    (``MergeEnv.final_reward`` of a recipe not scored yet, broadcast).

    The value net is regressed on these when the online reward is the front-building one: a value
    fitted to the plain scalarised score (``relabel``, about 0.5) would be wrong by that much
    where the online reward is mostly 0, and PPO's advantages, ``reward - value``, would then push
    the policy towards whatever the value net under-rates instead of what earns reward.
    """
    values = _scalarised(env, vectors, preferences)
    best = env.archive_bests(preferences)
    return np.maximum(0.0, values - best[:, None])


def _scalarised(env: MergeEnv, vectors: np.ndarray, preferences: np.ndarray) -> np.ndarray:
    """The env's scalarisation of every normalised score vector under every preference,
    (n_preferences, n_candidates)."""
    f = env.problem.normalised(np.atleast_2d(vectors))
    prefs = np.atleast_2d(np.asarray(preferences, float))
    values = scalarise(f[None, :, :], prefs[:, None, :], np.ones(env.k), env.scalarisation)
    return np.asarray(values)


def reachable(
    env: MergeEnv, candidates: Sequence[Candidate], preferences: np.ndarray
) -> np.ndarray:
    """Mask (n_preferences, n_candidates): whether the env lets that preference pick that merge."""
    if env.param_mode != "preference":
        return np.ones((len(preferences), len(candidates)), bool)
    merges = np.array([c.merge for c in candidates])  # one lattice index each (no weight_parts)
    chosen = np.array([env.merge_for(0, np.asarray(p, float)) for p in preferences])
    return chosen[:, None] == merges[None, :]


# ----------------------------------------------------------------------------- pre-training
@dataclass
class OfflineData:
    """Stacked observations with imitation targets (actions, mask) and value targets."""

    obs: dict[str, np.ndarray]
    actions: np.ndarray
    mask: np.ndarray
    imitate: np.ndarray  # whether the row is on a best-per-preference trajectory
    value: np.ndarray

    def __len__(self) -> int:
        """Number of states."""
        return len(self.value)


def build_dataset(
    env: MergeEnv,
    candidates: Sequence[Candidate],
    rewards: np.ndarray,
    preferences: np.ndarray,
    rng: np.random.Generator,
    value_extra: int = 2,
    values: np.ndarray | None = None,
) -> OfflineData:
    """States along the best candidate's trajectory per preference (imitated, value = its reward),
    plus ``value_extra`` random candidates' trajectories per preference (value targets only).

    ``rewards`` (n_preferences, n_candidates) choose what is imitated; ``values`` (same shape,
    default ``rewards``) are the value targets, e.g. ``front_relabel``'s for the front reward."""
    targets = rewards if values is None else np.asarray(values, float)
    if targets.shape != rewards.shape:
        raise ConfigError(f"build_dataset: values {targets.shape} do not match rewards "
                          f"{rewards.shape}")  # fmt: skip
    obs: list[dict] = []
    acts, masks, imitate, value = [], [], [], []
    ok = reachable(env, candidates, preferences)
    masked = np.where(ok, rewards, -np.inf)
    for i, pref in enumerate(preferences):
        picks = [(int(np.argmax(masked[i])), True)]
        pool = np.flatnonzero(ok[i])
        picks += [(int(j), False) for j in rng.choice(pool, min(value_extra, len(pool)), False)]
        for j, best in picks:
            a, m = candidate_actions(env, candidates[j])
            traj = trajectory_observations(env, a, pref)
            obs += traj
            acts.append(a)
            masks.append(m)
            imitate += [best] * len(a)
            value += [targets[i, j]] * len(a)
    width = max(x.shape[1] for x in acts)
    stacked = {k: np.stack([o[k] for o in obs]) for k in obs[0]}
    return OfflineData(
        stacked, np.concatenate(acts)[:, :width], np.concatenate(masks),
        np.asarray(imitate), np.asarray(value, np.float32),
    )  # fmt: skip


def policy_outputs(
    policy: ActorCriticPolicy, obs: dict[str, torch.Tensor], actions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-component log-probabilities and entropies (batch, n_components) of ``actions``, and
    values (batch,).

    ``obs`` are raw observation tensors (SB3's ``extract_features`` one-hot encodes them).
    """
    features = policy.extract_features(obs)
    if policy.share_features_extractor:
        latent_pi, latent_vf = policy.mlp_extractor(features)
    else:
        latent_pi = policy.mlp_extractor.forward_actor(features[0])
        latent_vf = policy.mlp_extractor.forward_critic(features[1])
    dist = policy._get_action_dist_from_latent(latent_pi)
    if isinstance(dist.distribution, list):  # MultiDiscrete: one Categorical per component
        parts = zip(dist.distribution, torch.unbind(actions, dim=1))
        logp = torch.stack([d.log_prob(a) for d, a in parts], dim=1)
        entropy = torch.stack([d.entropy() for d in dist.distribution], dim=1)
    else:  # Box (continuous merge weights): a diagonal Gaussian, independent per component
        logp = dist.distribution.log_prob(actions.float())
        entropy = dist.distribution.entropy()
    return logp, entropy, policy.value_net(latent_vf).flatten()


def pretrain(
    policy: ActorCriticPolicy,
    data: OfflineData,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    value_coef: float = 1.0,
    ent_coef: float = 0.0,
    generator: torch.Generator,
) -> list[dict[str, float]]:
    """Behaviour cloning + value regression; returns the mean losses of each epoch.

    ``ent_coef`` rewards the entropy of the components the imitated actions read, so cloning does
    not make the policy deterministic before the online phase has explored (a collapsed policy
    only re-samples recipes it has already scored).
    """
    device = policy.device
    obs = {k: torch.as_tensor(v, device=device) for k, v in data.obs.items()}
    actions = torch.as_tensor(data.actions, device=device)
    mask = torch.as_tensor(data.mask, device=device, dtype=torch.float32)
    imitate = torch.as_tensor(data.imitate, device=device, dtype=torch.float32)
    target = torch.as_tensor(data.value, device=device)
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    history = []
    policy.set_training_mode(True)
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=generator).to(device)
        sums = np.zeros(2)
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            batch = {k: v[idx] for k, v in obs.items()}
            logp, entropy, values = policy_outputs(policy, batch, actions[idx])
            rows = imitate[idx]
            n_rows = rows.sum().clamp(min=1.0)
            nll = -((logp * mask[idx]).sum(1) * rows).sum() / n_rows
            ent = ((entropy * mask[idx]).sum(1) * rows).sum() / n_rows
            vloss = torch.nn.functional.mse_loss(values, target[idx])
            opt.zero_grad()
            (nll - ent_coef * ent + value_coef * vloss).backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 0.5)
            opt.step()
            sums += [nll.item() * len(idx), vloss.item() * len(idx)]
        row = {
            "epoch": epoch,
            "imitation_loss": sums[0] / len(data),
            "value_loss": sums[1] / len(data),
        }
        log.info(
            "ppo pre-train epoch %d: imitation %.4f value %.5f", epoch, *list(row.values())[1:]
        )
        history.append(row)
    policy.set_training_mode(False)
    return history
