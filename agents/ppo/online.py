"""The online phase's PPO: every rollout trained on, the last partial one included, updates counted.

stable-baselines3's ``OnPolicyAlgorithm.learn`` returns *without training* when a callback stops
``collect_rollouts``, and the step that callback saw is not even added to the buffer. The budget
stop is such a callback, so before this module the online phase's last rollout (often its only
one) was thrown away. ``OnlinePPO.learn`` runs the same loop (collect, compute returns, train),
but on a stop it adds that last transition, truncates the buffer at ``buffer.pos``, computes
returns and GAE advantages bootstrapped from the value of the observation after it (zero at an
episode end, as SB3 does) and trains on it.

**An update** is one minibatch gradient step of the optimiser (``n_epochs`` passes over a rollout
of ``n`` transitions make ``n_epochs * ceil(n / batch_size)`` of them); ``updates`` counts them
with an optimiser hook, so it stays exact whatever SB3's loop does. After every training
``OnlinePPO.stats`` gets a row (rollout size, updates so far, policy / value loss, entropy,
approximate KL, clip fraction), and the SB3 logger is dumped: the runner routes it to W&B and the
run log (experiments/tracking.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.utils import obs_as_tensor

# SB3's train() records these; they are kept per training under the short names
TRAIN_KEYS = {
    "train/policy_gradient_loss": "policy_loss", "train/value_loss": "value_loss",
    "train/entropy_loss": "entropy_loss", "train/approx_kl": "approx_kl",
    "train/clip_fraction": "clip_fraction", "train/loss": "loss",
}  # fmt: skip


class _Locals(BaseCallback):
    """Keeps the rollout loop's locals of the last step (what a stop leaves out of the buffer)."""

    def _on_step(self) -> bool:
        return True


class OnlinePPO(PPO):
    """PPO whose ``learn`` also trains on the partial rollout a stopping callback leaves."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.updates = 0  # minibatch gradient steps (see the module docstring)
        self.trainings = 0  # rollouts trained on (full or partial)
        self.partial_trainings = 0
        self.stats: list[dict[str, float]] = []
        self.frozen = False  # True: collect episodes but never train (the offline-only ablation)
        # called after every training (the agent's hindsight self-imitation); what it returns
        # joins that training's ``stats`` row
        self.after_train: Callable[[], dict[str, float]] | None = None
        self._hook_optimiser()

    def _excluded_save_params(self) -> list[str]:
        """SB3's, and the hook (a bound method of the agent, which holds the problem)."""
        return [*super()._excluded_save_params(), "after_train"]

    def _hook_optimiser(self) -> None:
        def count(*_: Any) -> None:
            self.updates += 1

        self.policy.optimizer.register_step_post_hook(count)

    def learn(  # type: ignore[override]
        self, total_timesteps: int, callback: BaseCallback | None = None,
        reset_num_timesteps: bool = False, **_: Any,
    ) -> OnlinePPO:  # fmt: skip
        """Collect and train until ``total_timesteps`` or a callback stops; a stop mid-rollout
        trains on what was collected (the last step included)."""
        keeper = _Locals()
        callbacks = CallbackList([keeper, *([callback] if callback is not None else [])])
        total, cb = self._setup_learn(total_timesteps, callbacks, reset_num_timesteps)
        cb.on_training_start(locals(), globals())
        while self.num_timesteps < total:
            full = self.collect_rollouts(self.env, cb, self.rollout_buffer, self.n_steps)
            if not full:
                self._train_partial(keeper.locals)
                break
            self._update_current_progress_remaining(self.num_timesteps, total)
            self._train_and_log(int(self.rollout_buffer.buffer_size))
        cb.on_training_end()
        return self

    def _train_partial(self, last: dict[str, Any]) -> None:
        """Add the step the stop left out, then train on the buffer truncated at ``pos``."""
        buf = self.rollout_buffer
        if "new_obs" not in last:  # stopped before any step of this rollout
            return
        actions = last["actions"]
        if isinstance(self.action_space, spaces.Discrete):
            actions = actions.reshape(-1, 1)
        buf.add(self._last_obs, actions, last["rewards"], self._last_episode_starts,
                last["values"], last["log_probs"])  # fmt: skip
        self._last_obs, self._last_episode_starts = last["new_obs"], last["dones"]
        with torch.no_grad():
            values = self.policy.predict_values(obs_as_tensor(last["new_obs"], self.device))
        size, n = buf.buffer_size, (buf.buffer_size if buf.full else buf.pos)
        if n < size:
            _truncate(buf, n)
        buf.compute_returns_and_advantage(last_values=values, dones=last["dones"])
        self.partial_trainings += n < size and not self.frozen
        self._train_and_log(n)
        buf.buffer_size = size  # the next rollout's reset allocates the full size again

    def _train_and_log(self, steps: int) -> None:
        if self.frozen:
            return
        before = self.updates
        self.train()
        self.trainings += 1
        extra = self.after_train() if self.after_train is not None else {}
        values = dict(self.logger.name_to_value)
        row = {"timesteps": float(self.num_timesteps), "rollout_steps": float(steps),
               "transitions": float(steps * self.n_envs), "updates": float(self.updates),
               "rollout_updates": float(self.updates - before),
               "ent_coef": float(self.ent_coef)}  # fmt: skip
        row.update({short: float(values[k]) for k, short in TRAIN_KEYS.items() if k in values})
        row.update(extra)
        if "entropy_loss" in row:
            row["entropy"] = -row["entropy_loss"]
        self.stats.append(row)
        for key in ("updates", "rollout_steps", "entropy", "ent_coef", *extra):
            if key in row:
                self.logger.record(f"online/{key}", row[key])
        self.logger.dump(step=self.num_timesteps)

    def online_state(self) -> dict[str, Any]:
        """What a checkpoint needs to continue learning exactly (with the saved parameters)."""
        return {
            "num_timesteps": self.num_timesteps, "n_updates": self._n_updates,
            "updates": self.updates, "trainings": self.trainings,
            "partial_trainings": self.partial_trainings, "stats": list(self.stats),
            "ent_coef": self.ent_coef, "last_obs": self._last_obs,
            "last_episode_starts": self._last_episode_starts,
            "torch_rng": torch.get_rng_state(), "np_rng": np.random.get_state(),
        }  # fmt: skip

    def restore_online_state(self, state: dict[str, Any]) -> None:
        """Continue from ``online_state``'s counters, episode observations and random state."""
        self.num_timesteps, self._n_updates = state["num_timesteps"], state["n_updates"]
        self.updates, self.trainings = state["updates"], state["trainings"]
        self.partial_trainings, self.stats = state["partial_trainings"], list(state["stats"])
        self.ent_coef = state["ent_coef"]
        self._last_obs, self._last_episode_starts = state["last_obs"], state["last_episode_starts"]
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["np_rng"])


def _truncate(buf: Any, n: int) -> None:
    """Cut every per-step array of a rollout buffer to its first ``n`` steps and mark it full."""
    size = buf.buffer_size
    for name, value in list(vars(buf).items()):
        if isinstance(value, np.ndarray) and value.shape[:1] == (size,):
            setattr(buf, name, value[:n])
        elif isinstance(value, dict):
            setattr(buf, name, {k: v[:n] if isinstance(v, np.ndarray) and v.shape[:1] == (size,)
                                else v for k, v in value.items()})  # fmt: skip
    buf.buffer_size, buf.pos, buf.full = n, n, True


__all__ = ["OnlinePPO", "TRAIN_KEYS"]
