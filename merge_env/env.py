"""MergeEnv: architecture-space merging (HM3's MDP, DESIGN §1.1) as a Gymnasium environment."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from merge_env.errors import ConfigError
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ParamMerge
from merge_env.search.pareto import scalarise
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import MERGED, Recipe, Slot, uniform_merge, weighted_merge

MODES = ("free", "aligned")
PARAM_MODES = ("policy", "preference", "fixed")
DEFAULT_COEFFICIENTS = (0.5, 0.75, 1.0, 1.25, 1.5)


def weight_lattice(k: int, steps: int) -> list[tuple[float, ...]]:
    """Every weight vector on the k-simplex whose entries are multiples of 1/steps."""
    out = []
    for combo in itertools.product(range(steps + 1), repeat=k):
        if sum(combo) == steps:
            out.append(tuple(c / steps for c in combo))
    return out


class MergeEnv(gym.Env):
    """Build an inference path slot by slot over a MergeProblem's pool.

    ## Description
    An episode builds one merge recipe. The first action also picks the parameter-level merge
    (a point of a weight lattice for the merge operator, or the merge implied by the preference);
    every action appends one slot: a layer of a source (the parameter-merged model, the base or
    a fine-tune) with a residual scale. STOP at the first step keeps the plain parameter merge.

    ## Action Space
    ``MultiDiscrete``. Free mode: ``[merge, source-or-STOP, layer, scale level]`` where source
    ``n_sources`` is STOP. Aligned mode (slot t always takes layer t, depth fixed):
    ``[merge, source, scale level]``. The merge component is read at the first step only.

    ## Observation Space
    ``Dict``: ``preference`` (Box on the simplex), ``merge`` (Discrete; ``n_merges`` = not chosen
    yet), ``path`` (Box of shape (t_max, 3): rows ``[source + 1, layer, scale level]``, zero rows
    empty), ``position`` (Discrete(t_max + 1)).

    ## Rewards
    Zero until the episode ends; then the scalarised score on the search split, normalised by the
    ideal point (best single pool model per task), minus ``beta * len(path) / L``. ``info`` holds
    the score vector, the recipe and its hash.

    ## Starting State
    An empty path; the preference is drawn from Dirichlet(1) with ``self.np_random``, unless fixed
    by the constructor or by ``reset(options={"preference": [...]})``.

    ## Episode End
    Terminated at STOP, at ``t_max`` slots (free) or at ``L`` slots (aligned).

    ## Arguments
    ``problem`` (a MergeProblem; ``gym.make`` without one builds the default zoo's, see
    registration.py), ``mode``, ``t_max``,
    ``coefficients``, ``beta``, ``scalarisation`` ("tchebycheff" | "weighted_sum"),
    ``preference``, ``param_mode`` ("policy" | "preference" | "fixed"), ``merge_method``,
    ``density``, ``lattice_steps``, ``fixed_merge``, ``fidelity`` ("full" | "cheap").
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        problem: MergeProblem,
        *,
        mode: str = "free",
        t_max: int | None = None,
        coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
        beta: float = 0.02,
        scalarisation: str = "tchebycheff",
        preference: Sequence[float] | None = None,
        param_mode: str = "policy",
        merge_method: str = "dare_ties",
        density: float = 0.5,
        lattice_steps: int = 6,
        fixed_merge: ParamMerge | None = None,
        fidelity: str = "full",
        defer_scoring: bool = False,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"env.mode must be one of {MODES}, got {mode!r}")
        if param_mode not in PARAM_MODES:
            raise ConfigError(f"env.param_mode must be one of {PARAM_MODES}, got {param_mode!r}")
        if 1.0 not in coefficients:
            raise ConfigError(f"env.coefficients must contain 1.0, got {list(coefficients)}")
        if int(lattice_steps) < 1:
            # zero steps is an empty lattice: an env with no merge to choose
            raise ConfigError(f"env.lattice_steps must be >= 1, got {lattice_steps!r}")
        self.problem = problem
        pool = self.problem.pool
        self.mode = mode
        self.L = pool.num_layers
        self.t_max = self.L if mode == "aligned" else int(t_max or self.L + self.L // 2)
        self.coefficients = tuple(float(c) for c in coefficients)
        self.beta = float(beta)
        self.scalarisation = scalarisation
        self.param_mode = param_mode
        self.fidelity = fidelity
        # deferred: a finished episode returns reward 0 and info["pending"] = the recipe, for a
        # vectorised wrapper to score many episodes' recipes in one batch (agents/ppo/vec_env.py)
        self.defer_scoring = bool(defer_scoring)
        self.k = len(self.problem.objectives)
        self.sources = [MERGED, *pool.names]
        self.merges = self._merge_options(merge_method, density, lattice_steps, fixed_merge)
        self._fixed_pref = None if preference is None else _simplex(preference, self.k)
        n_choice = len(self.merges) if param_mode == "policy" else 1
        S, C = len(self.sources), len(self.coefficients)
        if mode == "free":
            self.action_space = spaces.MultiDiscrete([n_choice, S + 1, self.L, C])
        else:
            self.action_space = spaces.MultiDiscrete([n_choice, S, C])
        high = float(max(S + 1, self.L, C))
        self.observation_space = spaces.Dict(
            {
                "preference": spaces.Box(0.0, 1.0, (self.k,), np.float32),
                "merge": spaces.Discrete(len(self.merges) + 1),
                "path": spaces.Box(0.0, high, (self.t_max, 3), np.float32),
                "position": spaces.Discrete(self.t_max + 1),
            }
        )
        self._pref = np.full(self.k, 1.0 / self.k)
        self._merge_idx: int | None = None
        self._slots: list[Slot] = []
        self._rows = np.zeros((self.t_max, 3), np.float32)

    # -- parameter level ---------------------------------------------------------------------
    def _merge_options(
        self, method: str, density: float, steps: int, fixed: ParamMerge | None
    ) -> list[ParamMerge]:
        experts = self.problem.pool.experts
        if self.param_mode == "fixed" and fixed is not None:
            return [fixed]
        if get_operator(method).param("weight") is None:
            raise ConfigError(f"env.merge_method {method!r} takes no per-model weight")
        if self.param_mode == "fixed":
            # uniform weights on the simplex: the lattice's centre, and the merge the flat genome's
            # level="arch" fixes (agents/genome.py), so the ablation compares like with like
            return [uniform_merge(method, experts, density=density)]
        return [
            weighted_merge(method, dict(zip(experts, w)), density=density)
            for w in weight_lattice(len(experts), steps)
        ]

    def merge_for(self, choice: int, preference: np.ndarray) -> int:
        """The merge index an episode uses, given the action's choice and the mode."""
        if self.param_mode == "fixed":
            return 0
        if self.param_mode == "preference":
            # the paper's choice: task weights = preference (nearest lattice point)
            weights = np.array([[m.parameters.get("weight", 0.0) for m in merge.models]
                                for merge in self.merges])  # fmt: skip
            return int(np.argmin(np.abs(weights - preference[: weights.shape[1]]).sum(axis=1)))
        return int(choice)

    # -- Gymnasium API -----------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: Mapping[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start a new path; draw (or take) the preference."""
        super().reset(seed=seed)
        pref = (options or {}).get("preference")
        if pref is not None:
            self._pref = _simplex(pref, self.k)
        elif self._fixed_pref is not None:
            self._pref = self._fixed_pref
        else:
            self._pref = self.np_random.dirichlet(np.ones(self.k))
        self._merge_idx = None
        self._slots = []
        self._rows[:] = 0
        return self._get_obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        """Append one slot (or STOP); score the recipe when the path ends."""
        action = np.asarray(action, dtype=np.int64)
        if not self.action_space.contains(action):
            raise ConfigError(f"action {action.tolist()} outside {self.action_space}")
        t = len(self._slots)
        if t == 0:
            self._merge_idx = self.merge_for(int(action[0]), self._pref)
        source_idx = int(action[1])
        stop = self.mode == "free" and source_idx == len(self.sources)
        if not stop:
            layer = int(action[2]) if self.mode == "free" else t
            level = int(action[-1])
            self._slots.append(Slot(self.sources[source_idx], layer, self.coefficients[level]))
            self._rows[t] = (source_idx + 1, layer, level)
        if stop or len(self._slots) >= self.t_max:
            return self._finish()
        return self._get_obs(), 0.0, False, False, {}

    def _get_obs(self) -> dict[str, Any]:
        merge = len(self.merges) if self._merge_idx is None else self._merge_idx
        return {
            "preference": self._pref.astype(np.float32),
            "merge": merge,
            "path": self._rows.copy(),
            "position": len(self._slots),
        }

    def recipe(self) -> Recipe:
        """The recipe the current path stands for (an empty path = the parameter merge)."""
        merge = self.merges[self._merge_idx or 0]
        return Recipe(merge=merge, path=tuple(self._slots) if self._slots else None)

    def reward_of(
        self, vector: np.ndarray, length: int, preference: np.ndarray | None = None
    ) -> float:
        """Scalarised normalised score (for ``preference``, default the episode's) minus the
        length penalty."""
        f = self.problem.normalised(vector)
        pref = self._pref if preference is None else np.asarray(preference, float)
        value = scalarise(f, pref, np.ones(self.k), self.scalarisation)
        return float(value) - self.beta * length / self.L

    def scored_info(self, recipe: Recipe, vector: np.ndarray, cached: bool) -> dict[str, Any]:
        """The ``info`` of a finished episode once its recipe is scored."""
        return {
            "scores": dict(zip(self.problem.objectives, np.asarray(vector).tolist())),
            "vector": vector,
            "recipe": recipe,
            "recipe_hash": recipe.hash,
            "cached": cached,
            "length": len(recipe.resolved_path(self.L)),
            "preference": self._pref.copy(),
        }

    def _finish(self) -> tuple[dict[str, Any], float, bool, bool, dict]:
        recipe = self.recipe()
        if self.defer_scoring:
            info = {"pending": recipe, "preference": self._pref.copy(),
                    "length": len(recipe.resolved_path(self.L))}  # fmt: skip
            return self._get_obs(), 0.0, True, False, info
        scored = self.problem.score(recipe, fidelity=self.fidelity, source="env")
        info = self.scored_info(recipe, scored.vector, scored.cached)
        return self._get_obs(), self.final_reward(scored.vector, info["length"]), True, False, info

    def final_reward(
        self, vector: np.ndarray, length: int, preference: np.ndarray | None = None
    ) -> Any:
        """The reward at the end of an episode whose recipe scored ``vector``."""
        return self.reward_of(vector, length, preference)


class MOMergeEnv(MergeEnv):
    """MergeEnv with a vector reward (normalised score per task), MO-Gymnasium style."""

    def __init__(self, problem: MergeProblem, **kwargs: Any) -> None:
        super().__init__(problem, **kwargs)
        self.reward_space = spaces.Box(-np.inf, np.inf, (self.k,), np.float32)

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], Any, bool, bool, dict]:
        """As MergeEnv.step, with a zero vector before the end."""
        obs, reward, term, trunc, info = super().step(action)
        if not term or "pending" in info:
            reward = np.zeros(self.k, np.float32)
        return obs, reward, term, trunc, info

    def final_reward(
        self, vector: np.ndarray, length: int, preference: np.ndarray | None = None
    ) -> Any:
        """The normalised score vector minus the length penalty (no preference needed)."""
        f = self.problem.normalised(vector) - self.beta * length / self.L
        return f.astype(np.float32)


def _simplex(pref: Sequence[float], k: int) -> np.ndarray:
    p = np.asarray(pref, dtype=float)
    if p.shape != (k,) or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise ConfigError(f"preference must be {k} non-negative numbers, got {list(pref)}")
    return p / p.sum()
