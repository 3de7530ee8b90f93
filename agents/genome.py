"""A flat genome x in [0, 1]^d over MergeEnv's recipe space, and the agents that search it.

Black-box optimisers (random search, CMA-ES, NSGA-II) see a box; one small codec turns a point of it
into a Recipe, as mergekit-evolve's ``evo/genome.py`` does from a genotype to a merge config.

* **Parameter level** (mergekit-evolve style): one weight gene per expert for the merge operator
  (ties by default, like the env), optionally one density gene per expert. ``weights="simplex"``
  divides the genes by their sum, so the weights live on the env's simplex; ``weights="lattice"``
  (the default) then rounds them to the env's weight lattice (multiples of 1/``lattice_steps``,
  largest remainders), so the merges are exactly the env's; ``weights="box"`` reads each gene as
  the weight itself, as mergekit-evolve does. ``param_mode="fixed"`` (the env's) keeps the uniform
  merge, as ``level="arch"`` does.
* **Per-part weights** (``weight_parts``, e.g. ``["self_attn", "mlp"]``): one weight gene per
  expert for every part, a part being the tensors its filter matches (mergekit's ``{filter,
  value}`` lists: a filter contained in the tensor's name, or, in MergeGym's engine, equal to its
  arch part such as ``embed``; the first filter that matches wins), plus one per expert for the
  tensors no filter names (embeddings, norms, head). Each part's weights are read as above, on
  their own. A genome whose parts agree decodes to the plain per-expert merge (same hash). Why:
  the interference study (``results/interference_study/``) found that the experts' vectors cost
  each other's gains through the attention on the zoo and through the MLP on SmolLM2, which one
  weight per expert cannot tell apart.
* **Architecture level**, three encodings of the inference path:

  - ``"free"`` (the default, the env's default mode): ``t_max`` slots of four genes each,
    ``[include, source, layer, scale]``. The path is the included slots (include > 0.5) in order;
    each takes the layer and source its genes' bins pick (sources in the env's order
    ``[merged, base, experts...]``) and one of the env's coefficient levels. Every path the env's
    free mode builds (any depth up to ``t_max``, layers repeated, dropped or reordered, residual
    scales) is one genome, and every genome is one of them; no slot included is the env's STOP
    at once (the plain merge).

  - ``"aligned"``: slot t takes layer t; per layer a source gene picks one of
    ``[merged, base, experts...]`` (the env's source order) and a scale gene picks one of the
    env's coefficient levels. Depth is fixed at L, like the env's aligned mode.
  - ``"indicator"``: the data-flow-space encoding of Akiba et al. 2024 (Evolutionary Optimization of
    Model Merging Recipes, §3.2): a candidate sequence of R repeats of every (layer, source) pair,
    each with an include-indicator (on when > 0.5) and a scale gene standing in for their scaling
    matrix W. The path is the included candidates in order, capped at ``t_max``. Unlike the paper's
    model-major order, candidates run repeat -> layer -> source, so every depth-preserving path of
    one repeat is expressible and layers of one repeat stay in depth order.

The ablation switch ``level`` keeps one level: ``"param"`` (identity path), ``"arch"`` (merge fixed
to uniform weights), ``"both"``. A path equal to the identity over ``merged`` decodes to
``path=None``, so it shares its hash, cache entry and archive line with the plain parameter merge.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.base import Agent
from merge_env.env import DEFAULT_COEFFICIENTS, snap_to_lattice
from merge_env.errors import ConfigError, MergeError
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ParamMerge
from merge_env.search.budget import Budget
from merge_env.search.problem import MergeProblem, Scored
from merge_env.search.recipe import (
    BASE,
    MERGED,
    REST,
    Recipe,
    Slot,
    check_pool_parts,
    check_weight_parts,
    part_weighted_merge,
    read_part_weights,
    uniform_merge,
)

log = logging.getLogger(__name__)

LEVELS = ("param", "arch", "both")
ENCODINGS = ("free", "aligned", "indicator")
WEIGHT_MODES = ("lattice", "simplex", "box")
PARAM_MODES = ("policy", "preference", "fixed")  # the env's; the genome has no preference input
_ON, _OFF = 0.75, 0.25  # indicator genes of identity(): equally far from the 0.5 threshold


@dataclass(frozen=True)
class PoolFacts:
    """What the codec needs to know about a pool: its expert names and depth."""

    experts: tuple[str, ...]
    num_layers: int

    @property
    def sources(self) -> tuple[str, ...]:
        """Path sources in the env's order: merged, base, experts."""
        return (MERGED, BASE, *self.experts)


def pool_facts(obj: Any) -> PoolFacts:
    """PoolFacts of a MergeProblem, a ModelPool, a PoolFacts or a {experts, num_layers} mapping."""
    if isinstance(obj, PoolFacts):
        return obj
    if isinstance(obj, Mapping):
        experts, layers = obj.get("experts"), obj.get("num_layers")
    else:
        pool = getattr(obj, "pool", obj)
        experts, layers = getattr(pool, "experts", None), getattr(pool, "num_layers", None)
    if not experts or not isinstance(layers, int) or layers < 1:
        raise ConfigError(
            f"genome: need a pool with experts and num_layers >= 1, got experts={experts!r}, "
            f"num_layers={layers!r}"
        )
    return PoolFacts(tuple(str(e) for e in experts), int(layers))


def _bin(x: float, n: int) -> int:
    """Index of the equal-width bin of [0, 1] (n bins) that x falls in."""
    return min(int(x * n), n - 1)


def _centre(i: int, n: int) -> float:
    return (i + 0.5) / n


class Genome:
    """Codec between x in [0, 1]^dim and a Recipe; genes are laid out [parameter | architecture]."""

    def __init__(
        self,
        pool: Any,
        *,
        level: str = "both",
        encoding: str = "free",
        weights: str = "lattice",
        lattice_steps: int = 6,
        param_mode: str = "policy",
        density_genes: bool = False,
        merge_method: str = "ties",
        density: float = 0.5,
        density_range: tuple[float, float] = (0.1, 1.0),
        coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
        repeats: int = 2,
        t_max: int | None = None,
        weight_parts: Sequence[str] = (),
    ) -> None:
        for key, value, allowed in (
            ("level", level, LEVELS),
            ("encoding", encoding, ENCODINGS),
            ("weights", weights, WEIGHT_MODES),
            ("param_mode", param_mode, PARAM_MODES),
        ):
            if value not in allowed:
                raise ConfigError(f"genome.{key} must be one of {allowed}, got {value!r}")
        if 1.0 not in coefficients:
            raise ConfigError(f"genome.coefficients must contain 1.0, got {list(coefficients)}")
        lo, hi = density_range
        if not 0.0 < lo <= density <= hi <= 1.0:
            raise ConfigError(f"genome: need 0 < {lo} <= density {density} <= {hi} <= 1")
        if repeats < 1:
            raise ConfigError(f"genome.repeats must be >= 1, got {repeats}")
        if int(lattice_steps) < 1:
            raise ConfigError(f"genome.lattice_steps must be >= 1, got {lattice_steps}")
        self.facts = pool_facts(pool)
        self.parts = check_weight_parts(weight_parts, "genome.weight_parts")
        self.level, self.encoding, self.weights = level, encoding, weights
        self.lattice_steps, self.param_mode = int(lattice_steps), param_mode
        self.density_genes = bool(density_genes)
        self.merge_method, self.density = merge_method, float(density)
        self.density_range = (float(lo), float(hi))
        self.coefficients = tuple(float(c) for c in coefficients)
        self.repeats = int(repeats)
        L = self.facts.num_layers
        self.t_max = int(t_max) if t_max is not None else L + L // 2  # the env's default
        if encoding == "aligned":
            self.t_max = L  # as the env's aligned mode
        if self.t_max < 1:
            raise ConfigError(f"genome.t_max must be >= 1, got {t_max}")
        try:
            op = get_operator(merge_method)
        except MergeError as exc:
            raise ConfigError(f"genome.merge_method: {exc}") from None
        weight = op.param("weight")
        if weight is None or not weight.per_model:
            raise ConfigError(f"genome.merge_method {merge_method!r} takes no per-model weight")
        K = len(self.facts.experts)
        searched = level != "arch" and param_mode != "fixed"
        self.n_weights = K * (len(self.parts) + 1) if self.parts else K
        self.n_param = (self.n_weights + (K if self.density_genes else 0)) if searched else 0
        self.candidates = self._candidates()
        self.genes_per_slot = 4 if encoding == "free" else 2
        self.n_arch = self.genes_per_slot * len(self.candidates) if level != "param" else 0
        self.dim = self.n_param + self.n_arch
        self.uniform_merge = uniform_merge(merge_method, self.facts.experts, density=self.density)

    def _candidates(self) -> list[tuple[int, int]]:
        """(layer, source index) per architecture slot: L for aligned, t_max for free (both chosen
        by genes: -1), R*L*S for indicator."""
        L, S = self.facts.num_layers, len(self.facts.sources)
        if self.encoding == "aligned":
            return [(t, -1) for t in range(L)]  # source chosen by the gene
        if self.encoding == "free":
            return [(-1, -1) for _ in range(self.t_max)]
        return [(layer, s) for _ in range(self.repeats) for layer in range(L) for s in range(S)]

    # -- gene layout -------------------------------------------------------------------------
    @property
    def gene_names(self) -> list[str]:
        """A readable name per gene, in genome order."""
        names = []
        if self.n_param:
            if self.parts:
                names += [f"weight[{e}:{part}]" for part in (*self.parts, REST)
                          for e in self.facts.experts]  # fmt: skip
            else:
                names += [f"weight[{e}]" for e in self.facts.experts]
            if self.density_genes:
                names += [f"density[{e}]" for e in self.facts.experts]
        if self.n_arch:
            S = len(self.facts.sources)
            for i, (layer, s) in enumerate(self.candidates):
                if self.encoding == "free":
                    names += [f"{g}[{i}]" for g in ("include", "source", "layer", "scale")]
                elif self.encoding == "aligned":
                    names += [f"source[{layer}]", f"scale[{layer}]"]
                else:
                    tag = f"r{i // (self.facts.num_layers * S)}:{self.facts.sources[s]}.{layer}"
                    names += [f"include[{tag}]", f"scale[{tag}]"]
        return names

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n genomes drawn uniformly from the box, shape (n, dim)."""
        return rng.random((n, self.dim))

    def identity(self) -> np.ndarray:
        """A genome decoding to the uniform parameter merge with the identity path (path=None)."""
        x = np.empty(self.dim)
        K = len(self.facts.experts)
        if self.n_param:
            # any equal genes give uniform simplex weights; 0.5 leaves CMA-ES room on both sides
            x[: self.n_weights] = 1.0 / K if self.weights == "box" else 0.5
            if self.density_genes:
                lo, hi = self.density_range
                x[self.n_weights : self.n_param] = (
                    (self.density - lo) / (hi - lo) if hi > lo else 0.5
                )
        if self.n_arch and self.encoding == "free":
            x[self.n_param :] = self._free_genes(self._identity_path())
        elif self.n_arch:
            unit = _centre(self.coefficients.index(1.0), len(self.coefficients))
            arch = x[self.n_param :].reshape(-1, 2)
            arch[:, 1] = unit
            if self.encoding == "aligned":
                arch[:, 0] = _centre(0, len(self.facts.sources))  # source 0 = merged
            else:
                first_repeat = np.arange(len(self.candidates)) < self.facts.num_layers * len(
                    self.facts.sources
                )
                merged = np.array([s == 0 for _, s in self.candidates])
                # the merged layers of repeat 0 switched on spell out the identity path, which
                # decodes to None; a CMA-ES started here flips single layers in and out of it
                on = first_repeat & merged if self.t_max >= self.facts.num_layers else False
                arch[:, 0] = np.where(on, _ON, _OFF)
        return x

    # -- decoding ----------------------------------------------------------------------------
    def decode(self, x: Sequence[float] | np.ndarray) -> Recipe:
        """The Recipe a genome stands for (genes outside [0, 1] are clipped)."""
        g = np.asarray(x, dtype=float)
        if g.shape != (self.dim,):
            raise ConfigError(f"genome: expected a vector of {self.dim} genes, got shape {g.shape}")
        if not np.all(np.isfinite(g)):
            raise ConfigError(f"genome: genes must be finite, got {g.tolist()}")
        g = np.clip(g, 0.0, 1.0)
        merge = self._decode_merge(g[: self.n_param]) if self.n_param else self.uniform_merge
        path = self._decode_path(g[self.n_param :]) if self.n_arch else None
        return Recipe(merge=merge, path=path)

    def _decode_merge(self, genes: np.ndarray) -> ParamMerge:
        K = len(self.facts.experts)
        # one weight vector per part (the rest last), each read on its own
        w = np.stack([self._part_weights(g) for g in genes[: self.n_weights].reshape(-1, K)])
        densities = None
        if self.density_genes:
            lo, hi = self.density_range
            densities = lo + genes[self.n_weights : self.n_param] * (hi - lo)
        return self._merge(w, densities)

    def _part_weights(self, w: np.ndarray) -> np.ndarray:
        """One part's genes as the experts' weights (the simplex, the lattice or the box)."""
        total = w.sum()
        if total <= 1e-12:
            # all-zero weights make normalising operators divide by zero; read them as uniform
            w = np.full(len(w), 1.0 / len(w))
        elif self.weights != "box":
            w = w / total
        if self.weights == "lattice":
            w = snap_to_lattice(w, self.lattice_steps)
        return w

    def _merge(self, w: np.ndarray, densities: np.ndarray | None) -> ParamMerge:
        """The merge with weights ``w`` (parts x experts, the rest last) and ``densities``."""
        experts = self.facts.experts
        if densities is None:
            density: float | dict[str, float] | None = self.density
        else:
            density = {e: float(d) for e, d in zip(experts, densities)}
        return part_weighted_merge(self.merge_method, experts, w, self.parts, density=density)

    def _decode_path(self, genes: np.ndarray) -> tuple[Slot, ...] | None:
        sources, C, L = self.facts.sources, len(self.coefficients), self.facts.num_layers
        slots = []
        if self.encoding == "free":
            for inc, a, layer, c in genes.reshape(-1, 4):
                if inc > 0.5:
                    scale = self.coefficients[_bin(c, C)]
                    slots.append(Slot(sources[_bin(a, len(sources))], _bin(layer, L), scale))
        else:
            for (layer, s), (a, c) in zip(self.candidates, genes.reshape(-1, 2)):
                scale = self.coefficients[_bin(c, C)]
                if self.encoding == "aligned":
                    slots.append(Slot(sources[_bin(a, len(sources))], layer, scale))
                elif a > 0.5:
                    slots.append(Slot(sources[s], layer, scale))
                    if len(slots) == self.t_max:
                        break
        if not slots or tuple(slots) == self._identity_path():
            return None
        return tuple(slots)

    def _identity_path(self) -> tuple[Slot, ...]:
        return tuple(Slot(MERGED, t, 1.0) for t in range(self.facts.num_layers))

    def _free_genes(self, path: Sequence[Slot]) -> np.ndarray:
        """Free-encoding genes (bin centres) spelling ``path``; the slots after it are off and
        would, switched on, repeat layer t mod L of the merge at scale 1."""
        S, C, L = len(self.facts.sources), len(self.coefficients), self.facts.num_layers
        unit = self.coefficients.index(1.0)
        rows = np.empty((self.t_max, 4))
        for t in range(self.t_max):
            if t < len(path):
                slot = path[t]
                level = min(range(C), key=lambda i: abs(self.coefficients[i] - slot.scale))
                src, layer, on = self.facts.sources.index(slot.source), slot.layer, _ON
            else:
                src, layer, level, on = 0, t % L, unit, _OFF
            rows[t] = (on, _centre(src, S), _centre(layer, L), _centre(level, C))
        return rows.ravel()

    def encode(self, recipe: Recipe) -> np.ndarray | None:
        """A genome decoding to exactly ``recipe`` (same hash), or None when the space has none
        (e.g. a pool model as it is: its embeddings and head are no merge's)."""
        if recipe.shell is not None or recipe.merge is None:
            return None
        x = self.identity()
        if self.n_param:
            # (parts x experts, the rest last); None: not this genome's experts or parts
            w = read_part_weights(recipe.merge, self.facts.experts, self.parts)
            if w is None or np.any(w < 0) or (self.weights == "box" and np.any(w > 1)):
                return None
            if self.weights != "box":
                w = w / np.maximum(w.max(axis=1, keepdims=True), 1e-12)
            x[: self.n_weights] = w.ravel()
            if self.density_genes:
                lo, hi = self.density_range
                by_model = {m.model: m.parameters for m in recipe.merge.models}
                d = np.array([float(by_model[e].get("density", self.density))
                              for e in self.facts.experts])  # fmt: skip
                x[self.n_weights : self.n_param] = (
                    np.clip((d - lo) / (hi - lo), 0, 1) if hi > lo else 0.5
                )
        if recipe.path is not None:
            if not self.n_arch or any(s.source not in self.facts.sources for s in recipe.path):
                return None
            if self.encoding == "free" and len(recipe.path) <= self.t_max:
                x[self.n_param :] = self._free_genes(recipe.path)
            elif self.encoding == "aligned" and [s.layer for s in recipe.path] == list(
                range(self.facts.num_layers)
            ):
                S, C = len(self.facts.sources), len(self.coefficients)
                arch = x[self.n_param :].reshape(-1, 2)
                for t, slot in enumerate(recipe.path):
                    level = min(range(C), key=lambda i: abs(self.coefficients[i] - slot.scale))
                    arch[t] = (_centre(self.facts.sources.index(slot.source), S), _centre(level, C))
            else:
                return None
        return x if self.decode(x).hash == recipe.hash else None


class GenomeAgent(Agent):
    """Base of the black-box agents: genome options, and scoring genomes within the budget.

    The genome options default to the env's defaults (free mode, the weight lattice in sixths,
    its coefficients and t_max); ``conf/agent/*.yaml`` reads them from the env group, so
    ``env=...`` sets one space for every agent. The service options (``anchors``,
    ``screening``, ``screen_keep``, ``cheap_examples``) go to ``Agent``.
    """

    name = "genome"

    def __init__(
        self,
        seed: int = 0,
        *,
        level: str = "both",
        encoding: str = "free",
        weights: str = "lattice",
        lattice_steps: int = 6,
        param_mode: str = "policy",
        density_genes: bool = False,
        merge_method: str = "ties",
        density: float = 0.5,
        coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
        repeats: int = 2,
        t_max: int | None = None,
        weight_parts: Sequence[str] = (),
        max_proposals: int | None = None,
        **services: Any,
    ) -> None:
        super().__init__(seed, **services)
        self.genome_options: dict[str, Any] = {
            "level": level, "encoding": encoding, "weights": weights,
            "lattice_steps": lattice_steps, "param_mode": param_mode,
            "density_genes": density_genes, "merge_method": merge_method, "density": density,
            "coefficients": tuple(coefficients), "repeats": repeats, "t_max": t_max,
            "weight_parts": check_weight_parts(weight_parts, "agent.weight_parts"),
        }  # fmt: skip
        # check the options now, not at the first search (a config error should fail fast)
        Genome(PoolFacts(("a",), 1), **self.genome_options)
        self.max_proposals = max_proposals
        self.proposed = 0

    def genome(self, problem: MergeProblem) -> Genome:
        """The codec over this problem's pool (its per-part filters checked against its tensors)."""
        check_pool_parts(self.genome_options["weight_parts"], problem.pool)
        return Genome(problem, **self.genome_options)

    def proposal_cap(self, budget: Budget) -> int:
        """Most genomes one search may decode: cache hits are free, so a search over a
        small, fully cached recipe space would otherwise never end."""
        if self.max_proposals is not None:
            return int(self.max_proposals)
        return int(max(1000, 100 * math.ceil(budget.budget)))

    def evaluate_genomes(
        self, problem: MergeProblem, budget: Budget, genome: Genome, X: np.ndarray
    ) -> list[Scored]:
        """Score genomes in order through ``evaluate_many`` (anchors, screening, one batch for a
        parallel back-end); the list is cut short where the budget cannot pay the next one."""
        cap = self.proposal_cap(budget)
        recipes = []
        for x in X:
            if self.proposed >= cap:
                log.warning("%s: %d genomes proposed, stopping (recipe space exhausted?)",
                            self.name, cap)  # fmt: skip
                break
            self.proposed += 1
            recipes.append(genome.decode(x))
        return self.evaluate_many(problem, budget, recipes) if recipes else []

    def seed_genomes(
        self, problem: MergeProblem, budget: Budget, genome: Genome, keep: int | None = None
    ) -> list[tuple[np.ndarray, Scored]]:
        """Seed the anchors and screen the proposals (each when on) and return the encodable
        ones' (genome, full score): the anchors first, then the best ``keep`` proposals."""
        out = []
        if self.anchors:
            for scored in self.seed_anchors(problem, budget):
                x = genome.encode(scored.recipe)
                if x is not None:
                    out.append((x, scored))
        if self.proposals > 0:
            env = self.proposal_env(problem)
            promoted = self.screen_proposals(problem, budget, env, keep,
                                             accept=lambda r: genome.encode(r) is not None)  # fmt: skip
            out += [(genome.encode(s.recipe), s) for s in promoted]
        return out

    def proposal_env(self, problem: MergeProblem) -> Any:
        """A scratch MergeEnv over this agent's space, for the proposal distribution."""
        from merge_env.env import MergeEnv

        o = self.genome_options
        return MergeEnv(
            problem, mode="aligned" if o["encoding"] == "aligned" else "free", t_max=o["t_max"],
            coefficients=o["coefficients"], merge_method=o["merge_method"],
            density=o["density"], lattice_steps=o["lattice_steps"],
            param_mode="fixed" if o["level"] == "arch" else o["param_mode"],
        )  # fmt: skip

    def start(self, problem: MergeProblem, budget: float) -> tuple[Budget, Genome]:
        """Open a search: the budget, the codec, a fresh proposal count."""
        self.proposed = 0
        return Budget(problem, budget), self.genome(problem)

    @staticmethod
    def done(budget: Budget, scored: list[Scored], asked: int) -> bool:
        """Whether the search must stop: a batch was cut short, or nothing is left to spend."""
        return len(scored) < asked or budget.remaining <= 1e-9
