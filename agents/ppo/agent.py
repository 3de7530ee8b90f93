"""Preference-conditioned PPO over MergeEnv: HM3's offline pre-training, then online fine-tuning.

HM3 (DESIGN §1.1) trains PPO (Schulman et al., 2017, arXiv:1707.06347) with a GRU path encoder,
pre-trained offline on cheaply scored candidate paths. The paper re-trains one policy per
preference; here one policy takes the preference as input and covers the whole front:

0. Anchors (``anchors: true``, the framework's service in agents/base.py): each pool model as it
   is and the plain merges, scored first at full fidelity, as every agent may.
1. Offline: propose candidates (agents/ppo/offline.py), score each once through the screening
   service (``screening: true``: ``Agent.score_cheap``, charged at the cheap fidelity's fraction
   of a full evaluation; ``screening: false``: at full fidelity, so far fewer), relabel every
   score vector for every sampled preference, imitate the best candidate per preference, regress
   the value on what the online reward would pay (``front``: what each candidate adds to the
   archive as it stands, offline.py ``front_relabel``).
2. Online: PPO (agents/ppo/online.py: every rollout trained on, the last partial one included)
   on full-fidelity rewards, one preference per episode (or the user's), stopped by a callback
   before an evaluation it could not afford. The reward is the env's (``reward``): by default
   what the recipe adds to the archive for the episode's preference (``front``), so a repeat
   earns nothing; a stall (only cached recipes) tempers the policy and raises the entropy bonus
   (callbacks.py).
   After every training, hindsight self-imitation (``sil_epochs``, ``self_imitate``): every
   recipe known so far, at its full score where there is one, is relabelled for sampled
   preferences and the best per preference imitated, so what the full-fidelity episodes
   revealed reaches the policy for every preference, not only through the sparse front reward.
3. Sweep: the deterministic policy rolled out over a simplex lattice of preferences, so the front
   is covered; any budget left after it goes back to online training.
4. Only if the policy gives up (its entropy boosts found no new recipe) do fallbacks that do not
   sample the policy get budget, at most ``fallback_fraction`` of it: the offline candidates at
   full fidelity in the screening service's promotion order of their cheap scores ("promote");
   then the policy learns again; what it still leaves goes to epsilon-uniform episodes of the
   stochastic policy that score only new recipes ("explore").
   ``phase_spend`` records what each phase cost; ``online_stats`` what online learning did.

With a ``workdir`` (set by experiments/run.py) the policy, its optimiser, the phase and the
counters are checkpointed at every rollout and phase boundary (``agent/ppo_checkpoint/``), so a
killed run continues learning where it was.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv
from tqdm.auto import tqdm

from agents.base import Agent
from agents.ppo.callbacks import BudgetCallback, CheckpointCallback
from agents.ppo.encoder import PathEncoder
from agents.ppo.offline import (
    OfflineData,
    build_dataset,
    candidate_actions,
    front_relabel,
    pretrain,
    relabel,
)
from agents.ppo.online import OnlinePPO
from agents.ppo.vec_env import batch_scoring_env
from merge_env.env import MergeEnv, weight_lattice
from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.budget import Budget, BudgetExhausted
from merge_env.search.pareto import sample_preferences
from merge_env.search.problem import MergeProblem
from merge_env.search.proposals import Candidate, propose_candidates
from merge_env.search.recipe import Recipe, check_weight_parts
from merge_env.wrappers import RepeatPenalty, StopAtOnce

log = logging.getLogger(__name__)

LEVELS = ("both", "param", "arch")
# explore gives up after this many episodes in a row of recipes already scored (space exhausted)
EXPLORE_MISSES = 200
# the search's phases in order; a checkpoint records the finished ones (sweep2 is charged to
# "sweep", online2/online3 to "online")
PHASES = ("anchors", "offline", "sweep", "online", "sweep2", "online2", "promote", "online3",
          "explore")  # fmt: skip
CHECKPOINT = "ppo_checkpoint"


class PPOAgent(Agent):
    """HM3's PPO agent: offline pre-training on relabelled cheap scores, then PPO and a sweep."""

    name = "ppo"

    def __init__(
        self,
        seed: int = 0,
        *,
        level: str = "both",
        mode: str = "free",
        param_mode: str = "policy",
        beta: float = 0.02,
        scalarisation: str = "tchebycheff",
        reward: str = "front",
        weights: str = "lattice",
        weight_parts: Sequence[str] = (),
        preference: Sequence[float] | None = None,
        lattice_steps: int = 6,
        merge_method: str = "ties",
        density: float = 0.5,
        t_max: int | None = None,
        coefficients: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5),
        proposals: int = 200,
        proposal_fraction: float = 0.2,
        promote_proposals: bool = False,
        cheap_examples: int | None = 16,
        n_preferences: int = 256,
        value_extra: int = 2,
        bc_epochs: int = 30,
        bc_lr: float = 1e-3,
        bc_batch_size: int = 64,
        bc_ent_coef: float = 0.1,
        learning_rate: float = 3e-4,
        n_steps: int = 64,
        batch_size: int = 32,
        n_epochs: int = 4,
        gamma: float = 1.0,
        gae_lambda: float = 0.95,
        clip_range: float = 0.2,
        ent_coef: float = 0.01,
        embed_dim: int = 32,
        hidden_dim: int = 64,
        net_arch: Sequence[int] = (64, 64),
        sweep_fraction: float = 0.1,
        sweep_preferences: int = 15,
        repeat_penalty: float = 0.1,
        max_repeats: int = 64,
        ent_boost: float = 2.0,
        max_boosts: int = 3,
        temper: float = 2.0,
        fallback_fraction: float = 0.2,
        online_learning: bool = True,
        sil_epochs: int = 6,
        sil_preferences: int = 64,
        sil_offline: bool = True,
        explore_epsilon: float = 0.3,
        pretrained: str | None = None,
        save_path: str | None = None,
        device: str = "cpu",
        progress: bool = True,
        n_envs: int = 1,
        anchors: bool = True,
        screening: bool = True,
        screen_keep: float = 0.25,
    ) -> None:
        super().__init__(
            seed, anchors=anchors, screening=screening, screen_keep=screen_keep,
            cheap_examples=cheap_examples, proposals=proposals,
            proposal_fraction=proposal_fraction,
        )  # fmt: skip
        if level not in LEVELS:
            raise ConfigError(f"agent.level must be one of {LEVELS}, got {level!r}")
        if not 0.0 <= sweep_fraction < 1.0:
            raise ConfigError(f"agent.sweep_fraction must be in [0, 1), got {sweep_fraction}")
        if not 0.0 <= fallback_fraction <= 1.0:
            raise ConfigError(f"agent.fallback_fraction must be in [0, 1], got {fallback_fraction}")
        if ent_boost < 1.0 or max_boosts < 0 or temper < 1.0:
            raise ConfigError(f"agent.ent_boost and agent.temper must be >= 1 and agent.max_boosts"
                              f" >= 0, got {ent_boost}, {temper}, {max_boosts}")  # fmt: skip
        self.level = level
        parts = check_weight_parts(weight_parts, "agent.weight_parts")
        param_mode = "fixed" if level == "arch" else param_mode
        self.env_kwargs: dict[str, Any] = dict(
            mode=mode, beta=beta, scalarisation=scalarisation, preference=preference,
            lattice_steps=lattice_steps, merge_method=merge_method, density=density,
            t_max=t_max, coefficients=tuple(coefficients), reward=reward, weights=weights,
            param_mode=param_mode,
            # no merge weight is searched at level arch / param_mode fixed: the parts change
            # nothing there, as in the genome agents' codec
            weight_parts=() if param_mode == "fixed" else parts,
        )  # fmt: skip
        self.n_preferences = n_preferences
        self.value_extra = value_extra
        self.promote_proposals = promote_proposals
        self.bc = dict(epochs=bc_epochs, lr=bc_lr, batch_size=bc_batch_size, ent_coef=bc_ent_coef)
        self.ppo_kwargs: dict[str, Any] = dict(
            learning_rate=learning_rate, n_steps=n_steps, batch_size=batch_size,
            n_epochs=n_epochs, gamma=gamma, gae_lambda=gae_lambda, clip_range=clip_range,
            ent_coef=ent_coef, device=device,
        )  # fmt: skip
        self.policy_kwargs = dict(
            features_extractor_class=PathEncoder,
            features_extractor_kwargs=dict(embed_dim=embed_dim, hidden_dim=hidden_dim),
            net_arch=list(net_arch),
        )
        self.sweep_fraction = sweep_fraction
        self.sweep_preferences = sweep_preferences
        self.repeat_penalty = repeat_penalty
        self.max_repeats = max_repeats
        self.ent_boost, self.max_boosts = float(ent_boost), int(max_boosts)
        self.temper = float(temper)
        self.fallback_fraction = float(fallback_fraction)
        self.online_learning = bool(online_learning)
        if sil_epochs < 0 or sil_preferences < 1:
            raise ConfigError(f"agent.sil_epochs must be >= 0 and agent.sil_preferences >= 1, "
                              f"got {sil_epochs}, {sil_preferences}")  # fmt: skip
        self.sil_epochs, self.sil_preferences = int(sil_epochs), int(sil_preferences)
        self.sil_offline = bool(sil_offline)
        self._problem: MergeProblem | None = None
        self.explore_epsilon = float(explore_epsilon)
        self.pretrained = pretrained
        self.save_path = save_path
        self.progress = progress
        if n_envs < 1:
            raise ConfigError(f"agent.n_envs must be >= 1, got {n_envs}")
        self.n_envs = int(n_envs)
        self.model: OnlinePPO | None = None
        self.sb3_output: Any | None = None  # an SB3 KVWriter, set by the runner's tracker
        self.pretrain_history: list[dict[str, float]] = []
        self.offline: dict[str, Any] = {}
        # evaluations charged per phase (offline / sweep / online / promote / explore), last search
        self.phase_spend: dict[str, float] = {}
        # what online learning did in the last search (see ``online_summary``)
        self.online_stats: dict[str, Any] = {}
        self.phase = ""  # the phase in progress
        self.stalled = False  # whether the policy gave up (its entropy boosts found nothing new)
        self._boosts = 0  # entropy boosts over the search
        self.extra_callbacks: list[BaseCallback] = []  # added to online learning's (e.g. tests)
        self._done: list[str] = []
        self._budget: Budget | None = None
        self._phase_mark = 0.0
        self._callback: BudgetCallback | None = None
        self._callback_state: dict[str, Any] | None = None

    # -- wiring ------------------------------------------------------------------------------
    def make_env(
        self, problem: MergeProblem, *, train: bool = False, defer: bool = False
    ) -> gym.Env:
        """A MergeEnv over ``problem`` with this agent's settings (wrapped for level='param';
        with the repeat penalty for training; ``defer``: scoring left to a batching VecEnv)."""
        env: gym.Env = MergeEnv(problem, defer_scoring=defer, **self.env_kwargs)
        env = StopAtOnce(env) if self.level == "param" else env
        if train and self.repeat_penalty and not defer:
            env = RepeatPenalty(env, self.repeat_penalty)
        return env

    def make_train_env(self, problem: MergeProblem) -> VecEnv:
        """The training env: one MergeEnv, or ``n_envs`` whose finished recipes are scored in
        one batch per step (so an evaluator back-end such as Ray scores them in parallel); a
        VecEnv without SB3's Monitor, so a checkpointed episode can continue mid-way."""
        if self.n_envs == 1:
            return DummyVecEnv([lambda: self.make_env(problem, train=True)])
        return batch_scoring_env(
            lambda: self.make_env(problem, defer=True), self.n_envs, problem, self.repeat_penalty
        )

    def build_model(self, env: gym.Env | VecEnv, weights: str | Path | None = None) -> OnlinePPO:
        """A fresh (seeded) PPO over ``env``; its parameters loaded from ``weights`` (default
        ``pretrained``) when given."""
        model = OnlinePPO(
            "MultiInputPolicy", env, policy_kwargs=self.policy_kwargs, seed=self.seed,
            verbose=0, **self.ppo_kwargs,
        )  # fmt: skip
        model.frozen = not self.online_learning
        if self.sil_epochs:
            model.after_train = self.self_imitate
        # always our own logger: SB3's default makes an empty SB3-<date> folder in /tmp per learn()
        outputs = [self.sb3_output] if self.sb3_output is not None else []
        model.set_logger(Logger(folder=None, output_formats=outputs))
        weights = weights if weights is not None else self.pretrained
        if weights is not None:
            path = Path(weights)
            if not path.exists() and not path.with_suffix(".zip").exists():
                raise ConfigError(f"agent.pretrained: no saved policy at {path}")
            try:
                model.set_parameters(str(path), exact_match=False, device=model.device)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"agent.pretrained: {path} does not fit this env ({exc})"
                ) from exc
        return model

    def save_policy(self, path: str | Path) -> Path:
        """Save the policy (SB3 zip) for ``PPOAgent(pretrained=path)``; returns the file written."""
        if self.model is None:
            raise ConfigError("save_policy: the agent has no policy yet; run search() first")
        self.model.save(str(path))
        p = Path(path)
        return p if p.suffix == ".zip" else p.with_suffix(".zip")

    # -- the search --------------------------------------------------------------------------
    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Anchors, offline pre-training (unless pretrained), then the policy's phases within the
        budget (module docstring); a run with a checkpoint in ``workdir`` continues from it."""
        checkpoint = self._read_checkpoint()
        env = self.make_train_env(problem)
        # a resumed run continues from its checkpoint, or from the policy it saved at the end
        saved = None if self.workdir is None else Path(self.workdir) / "policy.zip"
        resume = saved if saved is not None and saved.is_file() else None
        if checkpoint is not None:
            resume = self._checkpoint_dir() / checkpoint["model"]
        self.model = self.build_model(env, resume)
        b = self._budget = Budget(problem, budget)
        self._problem = problem
        self.phase_spend, self._done, self.stalled, self._boosts = {}, [], False, 0
        self._callback_state, mark = None, b.used
        if checkpoint is not None:
            mark = self._restore(checkpoint, b, env)
            log.info("ppo: resuming at phase %s (%.2f of %.0f evaluations spent, %d updates)",
                     self.phase, b.used, b.budget, self.model.updates)  # fmt: skip
        elif resume is not None:
            self._done = ["offline"]  # the saved policy stands for the offline phase
        for phase in PHASES:
            if phase in self._done:
                continue
            if self.phase != phase:
                self.phase, mark = phase, b.used
            self._phase_mark = mark
            self._run_phase(phase, problem, b)
            self._charge(phase.rstrip("23"), b, mark)
            self._done.append(phase)
            self.phase = ""
            self._save_checkpoint()
        self.online_stats = self.online_summary()
        log.info("ppo: evaluations per phase %s; online %s",
                 {k: round(v, 2) for k, v in self.phase_spend.items()},
                 {k: v for k, v in self.online_stats.items() if k != "history"})  # fmt: skip
        if self.save_path is not None:
            self.save_policy(self.save_path)
        if saved is not None:
            saved.parent.mkdir(parents=True, exist_ok=True)
            self.save_policy(saved)
        log.info("ppo: spent %.2f of %.0f evaluations; archive %d", b.used, b.budget,
                 len(problem.archive))  # fmt: skip
        return problem.archive

    def _run_phase(self, phase: str, problem: MergeProblem, b: Budget) -> None:
        if phase == "anchors" and self.anchors:
            self.seed_anchors(problem, b)
        elif phase == "offline" and self.pretrained is None and self.proposals > 0:
            self.pretrain_offline(problem, b)
        elif phase in ("sweep", "sweep2"):
            self.sweep(problem, b)
        elif phase == "online":
            self.learn(b, self.sweep_fraction * b.budget)
        elif phase == "online2" and not self.stalled:
            self.learn(b, 0.0)
        elif phase == "promote":  # only budget the policy left: it gave up, or n_envs > 1
            spent = sum(self.phase_spend.get(k, 0.0) for k in ("promote", "explore"))
            self.promote(problem, b, self.fallback_fraction * b.budget - spent)
        elif phase == "online3":  # the archive changed: the policy tries again
            self.learn(b, 0.0)
        elif phase == "explore":
            self.explore(problem, b)

    def _charge(self, phase: str, budget: Budget, mark: float) -> float:
        """Add what was spent since ``mark`` to ``phase_spend[phase]``; returns the new mark."""
        self.phase_spend[phase] = self.phase_spend.get(phase, 0.0) + budget.used - mark
        return budget.used

    def online_summary(self) -> dict[str, Any]:
        """What online learning did: ``updates`` (minibatch gradient steps), ``trainings``
        (rollouts trained on) and ``partial_trainings`` (of them, cut short by the budget),
        ``timesteps``, ``entropy_boosts``, ``stalled``, the last training's losses, entropy,
        approximate KL and clip fraction, and ``history`` (one row per training)."""
        m = self.model
        if m is None:
            return {}
        last = m.stats[-1] if m.stats else {}
        out: dict[str, Any] = {
            "updates": m.updates, "trainings": m.trainings,
            "partial_trainings": m.partial_trainings, "timesteps": m.num_timesteps,
            "entropy_boosts": self._boosts, "stalled": self.stalled,
        }  # fmt: skip
        for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
            if key in last:
                out[key] = last[key]
        out["history"] = list(m.stats)
        return out

    # -- checkpoints ----------------------------------------------------------------------------
    def _checkpoint_dir(self) -> Path:
        assert self.workdir is not None
        return Path(self.workdir) / CHECKPOINT

    def _read_checkpoint(self) -> dict[str, Any] | None:
        if self.workdir is None or not (self._checkpoint_dir() / "state.pkl").is_file():
            return None
        with open(self._checkpoint_dir() / "state.pkl", "rb") as fh:
            return pickle.load(fh)

    def _save_checkpoint(self) -> None:
        """The policy and its optimiser (SB3 zip), then the state naming it (atomic): the phase,
        finished phases, spending, the budget's frame, the offline data, the online counters,
        the training envs' episodes and the random states."""
        if self.workdir is None or self.model is None or self._budget is None:
            return
        folder = self._checkpoint_dir()
        folder.mkdir(parents=True, exist_ok=True)
        old = self._read_checkpoint()
        number = (old["number"] + 1) if old else 0
        model = f"model-{number}.zip"
        self.model.save(str(folder / model))
        cb = self._callback
        state = {
            "number": number, "model": model, "phase": self.phase, "done": list(self._done),
            "phase_mark": self._phase_mark, "phase_spend": dict(self.phase_spend),
            "budget": self._budget.budget, "start": self._budget.start,
            "stalled": self.stalled, "boosts": self._boosts,
            "callback": cb.state() if cb is not None else None,
            "offline": self.offline, "pretrain_history": self.pretrain_history,
            "online": self.model.online_state(),
            "envs": [e.unwrapped.get_state() for e in _envs(self.model.get_env())],
        }  # fmt: skip
        tmp = folder / "state.pkl.tmp"
        with open(tmp, "wb") as fh:
            pickle.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, folder / "state.pkl")
        for f in folder.glob("model-*.zip"):
            if f.name != model:
                f.unlink(missing_ok=True)

    def _restore(self, ck: dict[str, Any], b: Budget, env: VecEnv) -> float:
        """Continue from a checkpoint: the budget's frame, phases, counters, episodes, random
        state; returns the evaluations spent when the phase in progress began."""
        assert self.model is not None
        if abs(ck["budget"] - (b.budget + b.start - ck["start"])) > 1e-6:
            log.warning("ppo: the checkpoint's budget (%.2f from %.2f) differs from this call's "
                        "(%.2f from %.2f); continuing the checkpoint's", ck["budget"],
                        ck["start"], b.budget, b.start)  # fmt: skip
        b.budget, b.start = ck["budget"], ck["start"]
        if "anchors" in ck["done"]:
            b.anchors = []  # seeded before the kill: never again
        self._done, self.phase = list(ck["done"]), ck["phase"]
        self.phase_spend, self.stalled = dict(ck["phase_spend"]), ck["stalled"]
        self._boosts, self._callback_state = ck["boosts"], ck["callback"]
        self.offline, self.pretrain_history = ck["offline"], ck["pretrain_history"]
        self.model.restore_online_state(ck["online"])
        for e, state in zip(_envs(env), ck["envs"]):
            e.unwrapped.set_state(state)
        return ck["phase_mark"] if ck["phase"] else b.used

    def pretrain_offline(self, problem: MergeProblem, budget: Budget) -> None:
        """Score candidates cheaply, relabel them for sampled preferences, pre-train the policy."""
        rng = np.random.default_rng(self.seed)
        fidelity = "cheap" if self.screening else "full"
        if self.screening:
            self.ensure_cheap(problem)
        scratch: MergeEnv = self.make_env(problem).unwrapped
        n = self.proposal_count(problem, budget, fidelity)
        candidates = propose_candidates(scratch, n, rng)
        if self.level == "param":
            candidates = [c for c in candidates if not c.slots]
        scored, vectors = [], []
        chunk = 8  # one batch per chunk (a parallel back-end scores it at once), one bar step each
        with tqdm(total=len(candidates), desc=f"ppo offline ({fidelity} scores)",
                  disable=not self.progress, leave=False) as bar:  # fmt: skip
            for start in range(0, len(candidates), chunk):
                cands = candidates[start : start + chunk]
                recipes = [c.recipe(scratch) for c in cands]
                if self.screening:
                    results = self.score_cheap(problem, budget, recipes)
                else:
                    results = self.evaluate_many(problem, budget, recipes)
                scored += cands[: len(results)]
                vectors += [r.vector for r in results]
                bar.update(len(results))
                if len(results) < len(cands):
                    break
        if not scored:
            log.warning("ppo: no budget for the offline phase; skipping pre-training")
            return
        if self.promote_proposals and self.screening:
            # the screening service as the genome agents use it on the proposals: the best
            # screen_keep share promoted to full fidelity (into the archive), charged here
            # (those already scored in full, e.g. the anchors, are not promoted again)
            recipes = [c.recipe(scratch) for c in scored]
            fresh = [i for i, r in enumerate(recipes) if not problem.is_cached(r)]
            chosen = self.best_share(problem, fresh, [vectors[i] for i in fresh])
            promoted = self._score_prefix(problem, budget, [recipes[i] for i in chosen], "full")
            for i, full in zip(chosen, promoted):
                vectors[i] = full.vector  # pre-train on the full score where there is one
        prefs = sample_preferences(self.n_preferences, scratch.k, rng)
        rewards, data = self._cloning_data(scratch, scored, np.stack(vectors), prefs, rng)
        gen = torch.Generator().manual_seed(self.seed)
        self.pretrain_history = pretrain(self.model.policy, data, generator=gen, **self.bc)
        for row in self.pretrain_history if self.sb3_output is not None else []:
            for key in ("imitation_loss", "value_loss"):
                self.model.logger.record(f"pretrain/{key}", row[key])
            self.model.logger.dump(step=int(row["epoch"]))
        self.offline = dict(candidates=scored, vectors=np.stack(vectors), preferences=prefs,
                            rewards=rewards, spent=budget.used)  # fmt: skip
        log.info("ppo: offline phase scored %d candidates for %.2f evaluations", len(scored),
                 budget.used)  # fmt: skip

    def _cloning_data(
        self, scratch: MergeEnv, cands: Sequence[Candidate], vectors: np.ndarray,
        prefs: np.ndarray, rng: np.random.Generator,
    ) -> tuple[np.ndarray, OfflineData]:  # fmt: skip
        """The imitation rewards (scalarised, relabelled for ``prefs``) and the dataset that
        clones the best candidate per preference; the value net learns what the online phase
        will pay (``front``: what a recipe adds to the archive as it stands). Shared by the
        offline phase and self-imitation."""
        lengths = [c.length(scratch) for c in cands]
        rewards = relabel(scratch, vectors, lengths, prefs)
        values = front_relabel(scratch, vectors, prefs) if scratch.reward == "front" else rewards
        data = build_dataset(scratch, cands, rewards, prefs, rng, self.value_extra, values)
        return rewards, data

    def learn(self, budget: Budget, reserve: float) -> bool:
        """PPO on full-fidelity rewards until only ``reserve`` (plus less than one eval) is left;
        returns whether it stopped because the policy gave up (only repeats, entropy boosted
        ``max_boosts`` times). Checkpointed at every rollout when there is a workdir."""
        assert self.model is not None
        cb = BudgetCallback(
            budget, reserve, self.max_repeats, self.progress, self.n_envs,
            boost=self.ent_boost, max_boosts=self.max_boosts,
            base_ent_coef=self.ppo_kwargs["ent_coef"], temper=self.temper,
        )  # fmt: skip
        if self._callback_state is not None:  # resumed mid-phase
            cb.restore(self._callback_state)
            self._callback_state = None
        if not cb.affordable():
            return False
        self._callback = cb
        callbacks = [cb, CheckpointCallback(self._save_checkpoint), *self.extra_callbacks]
        # an upper bound only: the callback ends training when the budget is spent or the policy
        # gives up; between two new recipes come at most max_repeats * (max_boosts + 1) repeats
        t_max = self.model.observation_space["path"].shape[0]
        episodes = (int(np.ceil(budget.remaining)) + 1) * (
            self.max_repeats * (self.max_boosts + 1) + 1
        )
        steps = episodes * t_max
        try:
            self.model.learn(steps, callback=CallbackList(callbacks), reset_num_timesteps=False)
        finally:
            self._callback = None
        self._boosts += cb.total_boosts
        self.model.ent_coef = self.ppo_kwargs["ent_coef"]
        self.stalled = self.stalled or cb.stalled
        if cb.stalled:
            log.info("ppo: no new recipe after %d entropy boosts; online phase stopped",
                     cb.total_boosts)  # fmt: skip
        return cb.stalled

    def self_imitate(self) -> dict[str, float]:
        """Hindsight self-imitation after an online training (``sil_epochs`` > 0).

        Every recipe scored so far that the env can express is relabelled for
        ``sil_preferences`` sampled preferences, and the policy imitates the best one per
        preference for ``sil_epochs`` epochs, as in the offline phase (the value net regresses
        on what the online reward pays). The recipes: the offline candidates at their cheap
        score, replaced by the full score once one is archived (left out when ``sil_offline``
        is false), and the archive's full-fidelity recipes (the policy's episodes, the sweeps,
        the plain merges among the anchors). So the real rewards PPO collected reach the policy
        for every preference at once, not only through the sparse front reward of the episode
        that found them: the stochastic policy then samples around the best recipes *known at
        full fidelity*, where the offline policy samples around the cheap scores' best.
        Self-imitation learning (Oh et al., ICML 2018) with HER-style relabelling; its own
        Adam, so PPO's optimiser state and ``updates`` are untouched. Returns the last epoch's
        losses and the number of recipes, for the training's ``stats`` row."""
        if self.model is None or self._problem is None:
            return {}
        problem = self._problem
        scratch: MergeEnv = self.make_env(problem).unwrapped
        by_hash: dict[str, Any] = {}
        offline = zip(self.offline["candidates"], self.offline["vectors"]) if self.offline else ()
        for cand, vector in offline if self.sil_offline else ():
            by_hash[cand.recipe(scratch).hash] = [cand, np.asarray(vector, float)]
        for entry in problem.archive:
            vector = entry.vector(problem.objectives)
            if not np.all(np.isfinite(vector)):
                continue
            if entry.recipe_hash in by_hash:
                by_hash[entry.recipe_hash][1] = vector  # the full score replaces the cheap one
                continue
            cand = _as_candidate(scratch, entry.recipe)
            if cand is not None:
                by_hash[entry.recipe_hash] = [cand, vector]
        if not by_hash:
            return {}
        cands = [c for c, _ in by_hash.values()]
        vectors = np.stack([v for _, v in by_hash.values()])
        rng = np.random.default_rng([self.seed, self.model.trainings])
        prefs = sample_preferences(self.sil_preferences, scratch.k, rng)
        _, data = self._cloning_data(scratch, cands, vectors, prefs, rng)
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        bc = {**self.bc, "epochs": self.sil_epochs}
        history = pretrain(self.model.policy, data, generator=gen, **bc)
        return {
            "sil_imitation_loss": history[-1]["imitation_loss"],
            "sil_value_loss": history[-1]["value_loss"],
            "sil_recipes": float(len(cands)),
        }

    def promote(self, problem: MergeProblem, budget: Budget, cap: float | None = None) -> None:
        """Spend what is left, at most ``cap`` evaluations, on the offline candidates, best first
        by the screening service's promotion order of their cheap scores (front by front)."""
        if not self.offline or budget.exhausted(problem.cost("full")):
            return
        scratch: MergeEnv = self.make_env(problem).unwrapped
        stop = budget.used + (budget.remaining if cap is None else max(0.0, cap))
        for i in self.promotion_order(problem, self.offline["vectors"]):
            if budget.exhausted(problem.cost("full")) or budget.used + problem.cost() > stop + 1e-9:
                return
            try:
                self.evaluate(problem, budget, self.offline["candidates"][i].recipe(scratch))
            except BudgetExhausted:
                return

    def explore(self, problem: MergeProblem, budget: Budget) -> None:
        """Spend what is still left once PPO has stalled and the offline candidates are scored:
        episodes of the stochastic policy, each action replaced by a uniform one with probability
        ``explore_epsilon``, scoring only recipes not scored yet."""
        assert self.model is not None
        if budget.exhausted(problem.cost("full")):
            return
        env = self.make_env(problem, defer=True)
        rng = np.random.default_rng(self.seed + 1)
        env.action_space.seed(self.seed + 1)
        misses = 0
        while not budget.exhausted(problem.cost("full")) and misses < EXPLORE_MISSES:
            obs, _ = env.reset(seed=int(rng.integers(2**31)))
            done, info = False, {}
            while not done:
                if rng.random() < self.explore_epsilon:
                    action = env.action_space.sample()
                else:
                    action, _ = self.model.predict(obs, deterministic=False)
                obs, _, done, _, info = env.step(action)
            if problem.is_cached(info["pending"]):
                misses += 1
                continue
            misses = 0
            self.evaluate(problem, budget, info["pending"])

    def sweep(self, problem: MergeProblem, budget: Budget) -> None:
        """Roll the deterministic policy out over a simplex lattice of preferences, then score
        the recipes as one batch (so shared merges and path prefixes are computed once).

        The env defers its scoring: a deterministic rollout never reads a score, so rolling
        every preference out first changes nothing but the batching. The batch is cut where
        the one-by-one sweep stopped (before the first rollout that began with less than one
        evaluation left), and scored in order, so the archive, the ledger and the spending
        are the same; a recipe twice in the sweep is charged once, as a cache hit would be.
        """
        assert self.model is not None
        env = self.make_env(problem, defer=True)
        base: MergeEnv = env.unwrapped
        prefs = _lattice(base.k, self.sweep_preferences)
        if self.env_kwargs["preference"] is not None:
            prefs = [np.asarray(self.env_kwargs["preference"], float)]
        recipes = []
        for pref in prefs:
            obs, _ = env.reset(options={"preference": pref})
            done, info = False, {}
            while not done:
                action, _ = self.model.predict(obs, deterministic=True)
                obs, _, done, _, info = env.step(action)
            recipes.append(info["pending"])
        recipes = recipes[: _affordable(problem, budget, recipes, base.fidelity)]
        if recipes:
            problem.score_many(recipes, fidelity=base.fidelity, source="env")


def _affordable(problem: MergeProblem, budget: Budget, recipes: list, fidelity: str) -> int:
    """How many of ``recipes``, scored in order, the budget lets a sweep start: each needs one
    evaluation left when it starts, cached or not; only new recipes spend it."""
    spend, seen = 0.0, set()
    for n, recipe in enumerate(recipes):
        if budget.exhausted(spend + problem.cost("full")):
            return n
        if recipe.hash not in seen and not problem.is_cached(recipe, fidelity):
            spend += problem.cost(fidelity)
        seen.add(recipe.hash)
    return len(recipes)


def _as_candidate(env: MergeEnv, recipe: dict) -> Candidate | None:
    """The env candidate that builds an archived recipe (its canonical dict), or None when the
    env cannot express it (a single pool model, a merge off the lattice, a path it cannot take)."""
    r = Recipe.from_dict(recipe)
    if r.merge is None or r.shell is not None:
        return None
    choice = env.choice_of(r.merge)
    if choice is None:
        return None
    cand = Candidate(choice, tuple(r.path or ()))
    try:
        candidate_actions(env, cand)
    except ConfigError:
        return None
    return cand


def _envs(venv: Any) -> list[gym.Env]:
    """The gymnasium envs inside a (wrapped) DummyVecEnv."""
    while not hasattr(venv, "envs"):
        venv = venv.venv
    return list(venv.envs)


def _lattice(k: int, n: int) -> list[np.ndarray]:
    """The densest simplex lattice with at most ``n`` points (at least the k vertices)."""
    steps = 1
    while len(weight_lattice(k, steps + 1)) <= n:
        steps += 1
    return [np.asarray(p) for p in weight_lattice(k, steps)]


__all__ = ["PPOAgent"]
