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
from merge_env.search.recipe import (
    MERGED,
    Recipe,
    Slot,
    check_pool_parts,
    check_weight_parts,
    part_weighted_merge,
    read_part_weights,
    uniform_merge,
    weighted_merge,
)

MODES = ("free", "aligned")
PARAM_MODES = ("policy", "preference", "fixed")
REWARDS = ("scalar", "front")
WEIGHTS = ("lattice", "simplex")
DEFAULT_COEFFICIENTS = (0.5, 0.75, 1.0, 1.25, 1.5)
# weights="simplex": continuous merge weights are snapped to multiples of 1/(SIMPLEX_RES *
# lattice_steps), so every lattice merge is one of them (same hash) and a recipe hashes stably
SIMPLEX_RES = 100


def snap_to_lattice(w: np.ndarray, steps: int) -> np.ndarray:
    """The point of the simplex lattice in multiples of 1/steps nearest ``w`` (on the simplex),
    by largest remainders, as ``weight_lattice`` writes it (c / steps)."""
    scaled = np.asarray(w, float) * steps
    counts = np.floor(scaled).astype(int)
    order = np.argsort(-(scaled - counts), kind="stable")
    counts[order[: steps - counts.sum()]] += 1
    return np.array([c / steps for c in counts.tolist()])


def _bin(a: float, n: int) -> int:
    """Index of the equal-width bin of [-1, 1] (n bins) that ``a`` falls in (a Box component)."""
    return int(min(max(int((float(a) + 1.0) / 2.0 * n), 0), n - 1))


def _bin_centre(i: int, n: int) -> float:
    return 2.0 * (i + 0.5) / n - 1.0


def weight_lattice(k: int, steps: int) -> list[tuple[float, ...]]:
    """Every weight vector on the k-simplex whose entries are multiples of 1/steps."""
    out = []
    for combo in itertools.product(range(steps + 1), repeat=k):
        if sum(combo) == steps:
            out.append(tuple(c / steps for c in combo))
    return out


def lattice_merges(
    method: str, experts: Sequence[str], steps: int, density: float | None
) -> list[ParamMerge]:
    """The plain merges of the weight lattice: ``method`` at every weight vector of the experts
    in multiples of 1/``steps`` (the env's parameter-level choices, in its order)."""
    return [weighted_merge(method, dict(zip(experts, w)), density=density)
            for w in weight_lattice(len(experts), steps)]  # fmt: skip


class MergeEnv(gym.Env):
    """Build an inference path slot by slot over a MergeProblem's pool.

    ## Description
    An episode builds one merge recipe. The first action also picks the parameter-level merge
    (a point of a weight lattice for the merge operator, or the merge implied by the preference);
    every action appends one slot: a layer of a source (the parameter-merged model, the base or
    a fine-tune) with a residual scale. STOP at the first step keeps the plain parameter merge.

    ## Action Space
    ``weights="lattice"``: ``MultiDiscrete``. Free mode: ``[merge, source-or-STOP, layer, scale
    level]`` where source ``n_sources`` is STOP. Aligned mode (slot t always takes layer t, depth
    fixed): ``[merge, source, scale level]``. The merge component is read at the first step only.
    With ``weight_parts`` (P tensor-name filters, e.g. ``("self_attn", "mlp")``) the merge is
    P + 1 components, a lattice point per part and one for the rest (embeddings, norms, head):
    the expert weights of each part's tensors, as the genome agents' per-part weights
    (``merge_env.search.recipe.part_weighted_merge``); parts that agree give the plain lattice
    merge, same hash.
    ``weights="simplex"`` (continuous merge weights): ``Box(-1, 1)`` of ``K`` weight components
    (one per expert; w = (a + 1) / 2 normalised to the simplex, snapped to multiples of
    1/(100 * lattice_steps), so the lattice merges are among them) followed by one component per
    discrete part above (source-or-STOP, layer, scale level), each read as the index of the
    equal-width bin of [-1, 1] it falls in. SB3's PPO takes no mixed Dict action, so the whole
    action is one Box.

    ## Observation Space
    ``Dict``: ``preference`` (Box on the simplex), ``merge`` (Discrete; ``n_merges`` = not chosen
    yet; with ``weight_parts`` MultiDiscrete, one such entry per part and the rest; with
    ``weights="simplex"`` Discrete(2): 0 chosen, 1 not yet), ``path`` (Box of shape
    (t_max, 3): rows ``[source + 1, layer, scale level]``, zero rows empty), ``position``
    (Discrete(t_max + 1)); with ``weights="simplex"`` also ``weights`` (Box(0, 1, (K,)): the
    chosen merge weights, zeros before).

    ## Rewards
    Zero until the episode ends. ``reward="scalar"``: the scalarised score on the search split,
    normalised by the ideal point (best single pool model per task), minus
    ``beta * len(path) / L``. ``reward="front"``: what the recipe adds to the archive for the
    episode's preference: ``max(0, s(f) - max_a s(f_a))``, s the scalarisation, f_a every
    archived score vector (the nadir when the archive is empty), and exactly 0 for a recipe
    already scored (a cache hit); no length penalty (the front does not count length).
    ``info`` holds the score vector, the recipe and its hash.

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
    ``density``, ``lattice_steps``, ``fixed_merge``, ``fidelity`` ("full" | "cheap"),
    ``reward`` ("scalar" | "front"), ``weights`` ("lattice" | "simplex"), ``weight_parts``
    (``()``: one merge weight per expert; per-part lattice weights need ``weights="lattice"``
    and ``param_mode="policy"``; each part must take a tensor of the pool).
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
        merge_method: str = "ties",
        density: float = 0.5,
        lattice_steps: int = 6,
        fixed_merge: ParamMerge | None = None,
        fidelity: str = "full",
        defer_scoring: bool = False,
        reward: str = "scalar",
        weights: str = "lattice",
        weight_parts: Sequence[str] = (),
    ) -> None:
        self.parts = check_weight_parts(weight_parts, "env.weight_parts")
        if self.parts and (weights != "lattice" or param_mode != "policy"):
            raise ConfigError(
                f"env.weight_parts={list(self.parts)}: per-part merge weights are lattice points "
                f"the policy picks; they need env.weights=lattice and env.param_mode=policy, got "
                f"weights={weights!r}, param_mode={param_mode!r} (continuous per-part weights "
                "are not built for the env; the genome agents search them)"
            )
        check_pool_parts(self.parts, problem.pool)
        if mode not in MODES:
            raise ConfigError(f"env.mode must be one of {MODES}, got {mode!r}")
        if reward not in REWARDS:
            raise ConfigError(f"env.reward must be one of {REWARDS}, got {reward!r}")
        if weights not in WEIGHTS:
            raise ConfigError(f"env.weights must be one of {WEIGHTS}, got {weights!r}")
        if weights == "simplex" and param_mode == "preference":
            raise ConfigError("env.weights=simplex: with env.param_mode=preference the preference "
                              "fixes the weights; use param_mode=policy or weights=lattice")  # fmt: skip
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
        self.reward = reward
        self.weights = weights
        self.fidelity = fidelity
        # deferred: a finished episode returns reward 0 and info["pending"] = the recipe, for a
        # vectorised wrapper to score many episodes' recipes in one batch (agents/ppo/vec_env.py)
        self.defer_scoring = bool(defer_scoring)
        self.k = len(self.problem.objectives)
        self.sources = [MERGED, *pool.names]
        self.merges = self._merge_options(merge_method, density, lattice_steps, fixed_merge)
        self.merge_method, self.density = merge_method, density
        self.weight_steps = SIMPLEX_RES * int(lattice_steps)
        self._fixed_pref = None if preference is None else _simplex(preference, self.k)
        n_choice = len(self.merges) if param_mode == "policy" else 1
        S, C = len(self.sources), len(self.coefficients)
        # the discrete parts after the merge: source (or STOP), layer (free mode), scale level
        self.path_sizes = [S + 1, self.L, C] if mode == "free" else [S, C]
        self.n_experts = len(pool.experts)
        obs = {
            "preference": spaces.Box(0.0, 1.0, (self.k,), np.float32),
            "merge": spaces.Discrete(len(self.merges) + 1),
        }
        # the merge components: one lattice index (per part and the rest, with weight_parts)
        self.n_parts = len(self.parts) + 1 if self.parts else 1
        self._lattice_w = [tuple(m.parameters.get("weight", 0.0) for m in merge.models)
                           for merge in self.merges]  # fmt: skip
        self._merge_index = {Recipe(merge=m).hash: i for i, m in enumerate(self.merges)}
        if self.parts:
            obs["merge"] = spaces.MultiDiscrete([len(self.merges) + 1] * self.n_parts)
        if weights == "lattice":
            self.merge_dims = self.n_parts
            self.action_space = spaces.MultiDiscrete([n_choice] * self.n_parts + self.path_sizes)
        else:
            self.merge_dims = self.n_experts
            dims = self.merge_dims + len(self.path_sizes)
            self.action_space = spaces.Box(-1.0, 1.0, (dims,), np.float32)
            obs["merge"] = spaces.Discrete(2)
            obs["weights"] = spaces.Box(0.0, 1.0, (self.n_experts,), np.float32)
        high = float(max(S + 1, self.L, C))
        obs["path"] = spaces.Box(0.0, high, (self.t_max, 3), np.float32)
        obs["position"] = spaces.Discrete(self.t_max + 1)
        self.observation_space = spaces.Dict(obs)
        self._pref = np.full(self.k, 1.0 / self.k)
        self._merge_idx: int | tuple[int, ...] | None = None
        self._merge: ParamMerge | None = None
        self._weights = np.zeros(self.n_experts, np.float32)
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
        return lattice_merges(method, experts, steps, density)

    def merge_for(self, choice: int, preference: np.ndarray) -> int:
        """The merge index an episode uses, given the action's choice and the mode."""
        if self.param_mode == "fixed":
            return 0
        if self.param_mode == "preference":
            # the paper's choice: task weights = preference (nearest lattice point)
            weights = np.asarray(self._lattice_w)
            return int(np.argmin(np.abs(weights - preference[: weights.shape[1]]).sum(axis=1)))
        return int(choice)

    def merge_of(self, choice: int | Sequence[int]) -> ParamMerge:
        """The merge a lattice choice stands for: an index into ``merges``, or with
        ``weight_parts`` one index per part and the rest (an int: the same for every part)."""
        if isinstance(choice, int | np.integer):
            return self.merges[int(choice)]
        idx = tuple(int(c) for c in choice)
        if len(idx) != self.n_parts:
            raise ConfigError(f"merge choice {list(idx)}: expected {self.n_parts} lattice "
                              f"indices (parts {list(self.parts)} and the rest)")  # fmt: skip
        w = np.array([self._lattice_w[i] for i in idx], float)
        return part_weighted_merge(self.merge_method, self.problem.pool.experts, w, self.parts,
                                   density=self.density)  # fmt: skip

    def choice_of(self, merge: ParamMerge) -> int | tuple[int, ...] | None:
        """The lattice choice that builds ``merge`` (``merge_of``'s inverse: an int, or with
        ``weight_parts`` a tuple per part and the rest), None when the env cannot pick it."""
        index = self._merge_index.get(Recipe(merge=merge).hash)
        if index is not None:
            return index if not self.parts else (index,) * self.n_parts
        if not self.parts:
            return None
        w = read_part_weights(merge, self.problem.pool.experts, self.parts)
        if w is None:
            return None
        # each part's row: the nearest lattice point (a recipe's dict rounds its weights), then
        # the hash says whether the env's merge is that one
        gap = np.abs(w[:, None, :] - np.asarray(self._lattice_w)[None, :, :]).max(axis=2)
        choice = tuple(int(i) for i in gap.argmin(axis=1))
        same = Recipe(merge=self.merge_of(choice)).hash == Recipe(merge=merge).hash
        return choice if same else None

    # -- the action codec ---------------------------------------------------------------------
    def decode_action(self, action: Any) -> tuple[Any, int, int, int]:
        """``(merge choice, source index, layer, scale level)`` an action stands for; the merge
        choice is a lattice index (weights="lattice") or the weight vector (weights="simplex")."""
        if self.weights == "lattice":
            a = np.asarray(action, dtype=np.int64)
            if not self.action_space.contains(a):
                raise ConfigError(f"action {a.tolist()} outside {self.action_space}")
            d = self.merge_dims
            parts = [int(x) for x in a[d:]]
            choice: Any = int(a[0]) if d == 1 else tuple(int(x) for x in a[:d])
        else:
            a = np.asarray(action, dtype=np.float32).reshape(-1)
            if a.shape != self.action_space.shape or not np.isfinite(a).all():
                raise ConfigError(f"action {a.tolist()} outside {self.action_space}")
            a = np.clip(a, -1.0, 1.0)
            d = self.merge_dims
            parts = [_bin(x, n) for x, n in zip(a[d:], self.path_sizes)]
            choice = self.simplex_weights(a[:d])
        layer = parts[1] if self.mode == "free" else -1
        return choice, parts[0], layer, parts[-1]

    def encode_action(
        self, merge: int | Sequence[int], source: int, layer: int, level: int
    ) -> np.ndarray:
        """The action choosing lattice merge ``merge`` (read at the first step only; with
        ``weight_parts`` one index per part and the rest, or one int for all), source index
        ``source`` (``len(sources)`` = STOP), ``layer`` (free mode) and scale ``level``."""
        parts = [source, layer, level] if self.mode == "free" else [source, level]
        if self.weights == "lattice":
            one = isinstance(merge, int | np.integer)
            head = [int(merge)] * self.merge_dims if one else [int(m) for m in merge]
            if len(head) != self.merge_dims:
                raise ConfigError(f"merge choice {head}: expected {self.merge_dims} indices")
            return np.asarray([*head, *parts], np.int64)
        w = np.asarray(self._lattice_w[merge], float)
        head = 2.0 * w / max(w.max(), 1e-12) - 1.0  # decodes to w / sum(w): the lattice point
        tail = [_bin_centre(p, n) for p, n in zip(parts, self.path_sizes)]
        return np.asarray([*head, *tail], np.float32)

    def with_stop(self, action: Any) -> np.ndarray:
        """The same action with STOP as the source (free mode)."""
        if self.weights == "lattice":
            out = np.array(action, dtype=np.int64)
            out[self.merge_dims] = len(self.sources)
        else:
            out = np.array(action, dtype=np.float32)
            out[self.merge_dims] = 1.0  # the last bin of the source component: STOP
        return out

    def simplex_weights(self, a: np.ndarray) -> np.ndarray:
        """Merge weights of the weight components ``a`` in [-1, 1]: (a + 1) / 2 on the simplex
        (uniform when all are -1), snapped to multiples of 1/``weight_steps``."""
        x = (np.asarray(a, float) + 1.0) / 2.0
        total = x.sum()
        w = x / total if total > 1e-9 else np.full(len(x), 1.0 / len(x))
        return snap_to_lattice(w, self.weight_steps)

    def _choose_merge(self, choice: Any) -> None:
        if self.weights == "simplex" and self.param_mode == "policy":
            w = np.asarray(choice, float)
            experts = self.problem.pool.experts
            self._merge = weighted_merge(self.merge_method, dict(zip(experts, w.tolist())),
                                         density=self.density)  # fmt: skip
            self._merge_idx = 0
            self._weights = w.astype(np.float32)
            return
        if self.parts:
            self._merge_idx = tuple(int(c) for c in choice)
            self._merge = self.merge_of(self._merge_idx)
            return
        if self.weights == "simplex":
            choice = 0
        self._merge_idx = self.merge_for(int(choice), self._pref)
        self._merge = self.merges[self._merge_idx]
        w = self._lattice_w[self._merge_idx]
        if self.weights == "simplex" and len(w) == self.n_experts:
            self._weights = np.asarray(w, np.float32)

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
        self._merge = None
        self._weights = np.zeros(self.n_experts, np.float32)
        self._slots = []
        self._rows[:] = 0
        return self._get_obs(), {}

    def step(self, action: np.ndarray) -> tuple[dict[str, Any], float, bool, bool, dict]:
        """Append one slot (or STOP); score the recipe when the path ends."""
        choice, source_idx, layer, level = self.decode_action(action)
        t = len(self._slots)
        if t == 0:
            self._choose_merge(choice)
        stop = self.mode == "free" and source_idx == len(self.sources)
        if not stop:
            layer = layer if self.mode == "free" else t
            self._slots.append(Slot(self.sources[source_idx], layer, self.coefficients[level]))
            self._rows[t] = (source_idx + 1, layer, level)
        if stop or len(self._slots) >= self.t_max:
            return self._finish()
        return self._get_obs(), 0.0, False, False, {}

    def _get_obs(self) -> dict[str, Any]:
        if self.weights == "lattice" and self.parts:
            unset = (len(self.merges),) * self.n_parts
            merge: Any = np.asarray(self._merge_idx or unset, np.int64)
        elif self.weights == "lattice":
            merge = len(self.merges) if self._merge_idx is None else self._merge_idx
        else:
            merge = 1 if self._merge is None else 0
        obs = {"preference": self._pref.astype(np.float32), "merge": merge}
        if self.weights == "simplex":
            obs["weights"] = self._weights.copy()
        obs["path"] = self._rows.copy()
        obs["position"] = len(self._slots)
        return obs

    def recipe(self) -> Recipe:
        """The recipe the current path stands for (an empty path = the parameter merge)."""
        merge = self._merge if self._merge is not None else self.merges[0]
        return Recipe(merge=merge, path=tuple(self._slots) if self._slots else None)

    # -- episode state (a checkpointed training run continues mid-episode) --------------------
    def get_state(self) -> dict[str, Any]:
        """The episode in progress and the env's random state (picklable)."""
        return {
            "pref": self._pref.copy(), "merge_idx": self._merge_idx, "merge": self._merge,
            "weights": self._weights.copy(), "slots": list(self._slots), "rows": self._rows.copy(),
            "rng": self.np_random.bit_generator.state,
        }  # fmt: skip

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Continue the episode ``get_state`` saved, with the same random state."""
        self._pref = np.asarray(state["pref"]).copy()
        self._merge_idx, self._merge = state["merge_idx"], state["merge"]
        self._weights = np.asarray(state["weights"], np.float32).copy()
        self._slots = list(state["slots"])
        self._rows = np.asarray(state["rows"], np.float32).copy()
        self.np_random.bit_generator.state = state["rng"]

    # -- the front-building reward ----------------------------------------------------------
    def archive_best(self, preference: np.ndarray | None = None) -> float:
        """The best scalarised value (for ``preference``, default the episode's) of any recipe in
        the archive; the nadir's (normalised score 0) when the archive is empty."""
        pref = self._pref if preference is None else np.asarray(preference, float)
        return float(self.archive_bests(pref[None, :])[0])

    def archive_bests(self, preferences: np.ndarray) -> np.ndarray:
        """``archive_best`` for each row of ``preferences`` (n, K), reading the archive once."""
        prefs = np.atleast_2d(np.asarray(preferences, float))
        m = self.problem.archive.score_matrix()
        m = m[np.all(np.isfinite(m), axis=1)] if m.size else m
        f = self.problem.normalised(m) if len(m) else np.zeros((1, self.k))
        values = scalarise(f[None, :, :], prefs[:, None, :], np.ones(self.k), self.scalarisation)
        return np.max(np.asarray(values), axis=1)

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
        best = self.archive_best() if self.reward == "front" else None
        scored = self.problem.score(recipe, fidelity=self.fidelity, source="env")
        info = self.scored_info(recipe, scored.vector, scored.cached)
        reward = self.final_reward(scored.vector, info["length"], cached=scored.cached, best=best)
        return self._get_obs(), reward, True, False, info

    def final_reward(
        self, vector: np.ndarray, length: int, preference: np.ndarray | None = None, *,
        cached: bool = False, best: float | None = None,
    ) -> Any:  # fmt: skip
        """The reward at the end of an episode whose recipe scored ``vector``; ``reward="front"``
        needs whether it was ``cached`` and the archive's ``best`` before it was scored."""
        if self.reward == "scalar":
            return self.reward_of(vector, length, preference)
        if cached:
            return 0.0
        pref = self._pref if preference is None else np.asarray(preference, float)
        best = self.archive_best(pref) if best is None else best
        f = self.problem.normalised(np.asarray(vector, float))
        value = float(scalarise(f, pref, np.ones(self.k), self.scalarisation))
        return max(0.0, value - best)


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
        self, vector: np.ndarray, length: int, preference: np.ndarray | None = None, **_: Any
    ) -> Any:
        """The normalised score vector minus the length penalty (no preference needed; the
        vector reward is the same for ``reward="front"``)."""
        f = self.problem.normalised(vector) - self.beta * length / self.L
        return f.astype(np.float32)


def _simplex(pref: Sequence[float], k: int) -> np.ndarray:
    p = np.asarray(pref, dtype=float)
    if p.shape != (k,) or np.any(p < 0) or not np.isfinite(p).all() or p.sum() <= 0:
        raise ConfigError(f"preference must be {k} non-negative numbers, got {list(pref)}")
    return p / p.sum()
