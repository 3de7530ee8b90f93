"""A flat genome x in [0, 1]^d over MergeEnv's recipe space, and the agents that search it.

Black-box optimisers (random search, CMA-ES, NSGA-II) see a box; one small codec turns a point of it
into a Recipe, as mergekit-evolve's ``evo/genome.py`` does from a genotype to a merge config.

* **Parameter level** (mergekit-evolve style): one weight gene per expert for the merge operator
  (dare_ties by default, like the env), optionally one density gene per expert. ``weights="simplex"``
  divides the genes by their sum, so the weights live on the env's simplex (its weight lattice is a
  subset); ``weights="box"`` reads each gene as the weight itself, as mergekit-evolve does.
* **Architecture level**, two encodings of the inference path:

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
from merge_env.env import DEFAULT_COEFFICIENTS
from merge_env.errors import ConfigError, MergeError
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ParamMerge
from merge_env.search.budget import Budget
from merge_env.search.problem import MergeProblem, Scored
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, uniform_merge, weighted_merge

log = logging.getLogger(__name__)

LEVELS = ("param", "arch", "both")
ENCODINGS = ("aligned", "indicator")
WEIGHT_MODES = ("simplex", "box")
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
        encoding: str = "aligned",
        weights: str = "simplex",
        density_genes: bool = False,
        merge_method: str = "dare_ties",
        density: float = 0.5,
        density_range: tuple[float, float] = (0.1, 1.0),
        coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
        repeats: int = 2,
        t_max: int | None = None,
    ) -> None:
        for key, value, allowed in (
            ("level", level, LEVELS),
            ("encoding", encoding, ENCODINGS),
            ("weights", weights, WEIGHT_MODES),
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
        self.facts = pool_facts(pool)
        self.level, self.encoding, self.weights = level, encoding, weights
        self.density_genes = bool(density_genes)
        self.merge_method, self.density = merge_method, float(density)
        self.density_range = (float(lo), float(hi))
        self.coefficients = tuple(float(c) for c in coefficients)
        self.repeats = int(repeats)
        L = self.facts.num_layers
        self.t_max = int(t_max) if t_max is not None else L + L // 2  # the env's default
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
        self.n_param = (2 * K if self.density_genes else K) if level != "arch" else 0
        self.candidates = self._candidates()
        self.n_arch = 2 * len(self.candidates) if level != "param" else 0
        self.dim = self.n_param + self.n_arch
        self.uniform_merge = uniform_merge(merge_method, self.facts.experts, density=self.density)

    def _candidates(self) -> list[tuple[int, int]]:
        """(layer, source index) per architecture gene pair: L for aligned, R*L*S for indicator."""
        L, S = self.facts.num_layers, len(self.facts.sources)
        if self.encoding == "aligned":
            return [(t, -1) for t in range(L)]  # source chosen by the gene
        return [(layer, s) for _ in range(self.repeats) for layer in range(L) for s in range(S)]

    # -- gene layout -------------------------------------------------------------------------
    @property
    def gene_names(self) -> list[str]:
        """A readable name per gene, in genome order."""
        names = []
        if self.n_param:
            names += [f"weight[{e}]" for e in self.facts.experts]
            if self.density_genes:
                names += [f"density[{e}]" for e in self.facts.experts]
        if self.n_arch:
            S = len(self.facts.sources)
            for i, (layer, s) in enumerate(self.candidates):
                if self.encoding == "aligned":
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
            x[:K] = 0.5 if self.weights == "simplex" else 1.0 / K
            if self.density_genes:
                lo, hi = self.density_range
                x[K : 2 * K] = (self.density - lo) / (hi - lo) if hi > lo else 0.5
        if self.n_arch:
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
        w, total = genes[:K], genes[:K].sum()
        if total <= 1e-12:
            # all-zero weights make normalising operators divide by zero; read them as uniform
            w = np.full(K, 1.0 / K)
        elif self.weights == "simplex":
            w = w / total
        densities = None
        if self.density_genes:
            lo, hi = self.density_range
            densities = lo + genes[K : 2 * K] * (hi - lo)
        return self._merge(w, densities)

    def _merge(self, w: np.ndarray, densities: np.ndarray | None) -> ParamMerge:
        experts = self.facts.experts
        if densities is None:
            density: float | dict[str, float] | None = self.density
        else:
            density = {e: float(d) for e, d in zip(experts, densities)}
        weights = {e: float(v) for e, v in zip(experts, w)}
        return weighted_merge(self.merge_method, weights, density=density)

    def _decode_path(self, genes: np.ndarray) -> tuple[Slot, ...] | None:
        pairs = genes.reshape(-1, 2)
        sources, C = self.facts.sources, len(self.coefficients)
        slots = []
        for (layer, s), (a, c) in zip(self.candidates, pairs):
            scale = self.coefficients[_bin(c, C)]
            if self.encoding == "aligned":
                slots.append(Slot(sources[_bin(a, len(sources))], layer, scale))
            elif a > 0.5:
                slots.append(Slot(sources[s], layer, scale))
                if len(slots) == self.t_max:
                    break
        identity = tuple(Slot(MERGED, t, 1.0) for t in range(self.facts.num_layers))
        if not slots or tuple(slots) == identity:
            return None
        return tuple(slots)


class GenomeAgent(Agent):
    """Base of the black-box agents: genome options, and scoring genomes within the budget."""

    name = "genome"

    def __init__(
        self,
        seed: int = 0,
        *,
        level: str = "both",
        encoding: str = "aligned",
        weights: str = "simplex",
        density_genes: bool = False,
        merge_method: str = "dare_ties",
        density: float = 0.5,
        coefficients: Sequence[float] = DEFAULT_COEFFICIENTS,
        repeats: int = 2,
        t_max: int | None = None,
        max_proposals: int | None = None,
    ) -> None:
        super().__init__(seed)
        self.genome_options: dict[str, Any] = {
            "level": level, "encoding": encoding, "weights": weights,
            "density_genes": density_genes, "merge_method": merge_method, "density": density,
            "coefficients": tuple(coefficients), "repeats": repeats, "t_max": t_max,
        }  # fmt: skip
        # check the options now, not at the first search (a config error should fail fast)
        Genome(PoolFacts(("a",), 1), **self.genome_options)
        self.max_proposals = max_proposals
        self.proposed = 0

    def genome(self, problem: MergeProblem) -> Genome:
        """The codec over this problem's pool."""
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
        """Score genomes in order; the list is cut short where the budget cannot pay the next one.

        The affordable prefix of the batch goes to ``problem.score_many`` at once, so a parallel
        back-end scores it together; it holds exactly the recipes one-by-one scoring would have
        paid for (cached ones and repeats within the batch are free).
        """
        cap = self.proposal_cap(budget)
        cost, spend = problem.cost("full"), budget.used
        recipes, seen = [], set()
        for x in X:
            if self.proposed >= cap:
                log.warning("%s: %d genomes proposed, stopping (recipe space exhausted?)",
                            self.name, cap)  # fmt: skip
                break
            self.proposed += 1
            recipe = genome.decode(x)
            if recipe.hash not in seen and not problem.is_cached(recipe):
                if spend + cost > budget.budget + 1e-9:  # Budget.exhausted, counted ahead
                    break
                spend += cost
            seen.add(recipe.hash)
            recipes.append(recipe)
        return problem.score_many(recipes, source=self.name) if recipes else []

    def start(self, problem: MergeProblem, budget: float) -> tuple[Budget, Genome]:
        """Open a search: the budget, the codec, a fresh proposal count."""
        self.proposed = 0
        return Budget(problem, budget), self.genome(problem)

    @staticmethod
    def done(budget: Budget, scored: list[Scored], asked: int) -> bool:
        """Whether the search must stop: a batch was cut short, or nothing is left to spend."""
        return len(scored) < asked or budget.remaining <= 1e-9
