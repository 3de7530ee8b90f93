"""MergeProblem: pool + tasks + evaluator + cache + archive -- the one place recipes become scores.

Budget accounting is in *evaluations*: scoring one recipe on every task's search split costs 1;
scoring it on a cheap subset (``fidelity="cheap"``) costs the fraction of examples scored; a
cache hit costs nothing and is counted apart. Reference scores (the single models that define
the ideal point) and test-split scores (reporting only) are counted apart too, so an agent's
budget is spent only on what the agent asked for.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from merge_env.errors import ConfigError
from merge_env.scoring.cache import EvalCache
from merge_env.scoring.evaluate import Evaluator, TaskScore
from merge_env.scoring.tasks.task import METRIC_BEST, Task
from merge_env.search.archive import Archive, Entry
from merge_env.search.assemble import ModelPool
from merge_env.search.budget import Ledger
from merge_env.search.pareto import hypervolume, ideal_point, non_dominated, normalise
from merge_env.search.recipe import Recipe, param_merge, uniform_merge

log = logging.getLogger(__name__)

FIDELITIES = ("full", "cheap")
# headline metrics below zero (normalised from a nadir, not as f / z*; see MergeProblem.nadir)
NEGATIVE_METRICS = ("loglik",)
# a task whose best single model reaches less than this share of the metric's range (nadir to a
# perfect score: 5 % of exact match) is divided by a small z*; the problem warns
WEAK_REACH = 0.05


@dataclass(frozen=True)
class Scored:
    """What scoring a recipe returns: the objective vector and every metric, per task."""

    recipe: Recipe
    vector: np.ndarray  # headline metric per objective, in problem.objectives order
    details: dict[str, TaskScore]
    cached: bool
    cost: float  # evaluations charged for this call
    fidelity: str = "full"  # "cheap": scored on the cheap subset (a screening score)


class MergeProblem:
    """A merge search problem over one pool and task set; every score is cached and archived."""

    def __init__(
        self,
        pool: ModelPool,
        tasks: Sequence[Task],
        evaluator: Evaluator,
        archive: Archive | None = None,
        *,
        metric: str | None = None,
        cheap_examples: int | None = None,
        reference_point: Sequence[float] | None = None,
        ledger_path: str | Path | None = None,
    ) -> None:
        if not tasks:
            raise ConfigError("MergeProblem: at least one task is needed")
        self.pool = pool
        self.tasks = list(tasks)
        self.objectives = [t.name for t in self.tasks]
        self.metric = metric
        self.evaluator = evaluator
        self.archive = archive if archive is not None else Archive(None, self.objectives)
        if list(self.archive.objectives) != self.objectives:
            raise ConfigError(
                f"archive objectives {list(self.archive.objectives)} differ from the tasks "
                f"{self.objectives}"
            )
        self.cheap_evaluator: Evaluator | None = None
        if cheap_examples is not None:
            self.enable_cheap(cheap_examples)
        # every charge is appended to a ledger, so a resumed run knows what it has spent
        # (cheap evaluations never reach the archive)
        self.ledger = Ledger(
            ledger_path, fallback=max((e.evaluations for e in self.archive), default=0)
        )
        self.cache_hits = 0
        self.reference_evaluations = 0
        self.test_evaluations = 0
        self.reference_point = (
            np.zeros(len(self.tasks)) if reference_point is None else np.asarray(reference_point)
        )
        # computes scores for a batch of uncached recipes; a parallel back-end replaces it
        self.backend: Callable[[Sequence[Recipe], Evaluator, str], list[dict[str, TaskScore]]]
        self.backend = self.local_backend
        # called with each new archive Entry (loggers, progress bars); never with cache hits
        self.listeners: list[Callable[[Entry], None]] = []
        self._ideal: np.ndarray | None = None
        self._nadir: np.ndarray | None = None
        self._top: np.ndarray | None = None
        self._references: dict[str, np.ndarray] | None = None

    # -- scoring -----------------------------------------------------------------------------
    def headline(self, task: Task, score: TaskScore) -> float:
        """The objective value of one task score (the problem's metric or the task's own)."""
        return score.get(self.metric or task.metric)

    def _evaluator(self, fidelity: str) -> Evaluator:
        if fidelity not in FIDELITIES:
            raise ConfigError(f"fidelity must be one of {FIDELITIES}, got {fidelity!r}")
        if fidelity == "cheap":
            if self.cheap_evaluator is None:
                raise ConfigError("fidelity='cheap' needs MergeProblem(cheap_examples=...)")
            return self.cheap_evaluator
        return self.evaluator

    def _examples(self, evaluator: Evaluator, split: str) -> int:
        cap = evaluator.max_examples or math.inf
        return sum(min(len(t.split(split)), cap) for t in self.tasks)

    def model_key(self, recipe: Recipe) -> str:
        """The evaluation-cache key of a recipe on this pool."""
        return f"{self.pool.fingerprint}:{recipe.hash}"

    def cost(self, fidelity: str = "full") -> float:
        """Evaluations charged for scoring one uncached recipe at this fidelity."""
        ev = self._evaluator(fidelity)
        return self._examples(ev, "search") / self._examples(self.evaluator, "search")

    def price(self, recipe: Recipe, fidelity: str = "full", *, pay_cached: bool = False) -> float:
        """Evaluations scoring ``recipe`` on the search split would charge now (see score_many)."""
        if not self.is_cached(recipe, fidelity):
            return self.cost(fidelity)
        if pay_cached and not self.ledger.charged(self.model_key(recipe), fidelity):
            return self.cost(fidelity)
        return 0.0

    def is_cached(self, recipe: Recipe, fidelity: str = "full", split: str = "search") -> bool:
        """Whether every task's score of this recipe is already in the evaluation cache."""
        ev = self._evaluator(fidelity)
        if ev.cache is None:
            return False
        key = self.model_key(recipe)
        return all(ev.cache.get(ev.cache_key(key, t, split)) is not None for t in self.tasks)

    def score(
        self,
        recipe: Recipe,
        *,
        split: str = "search",
        fidelity: str = "full",
        source: str = "agent",
        record: bool = True,
        charge: bool = True,
    ) -> Scored:
        """Score a recipe on every task (cache first); charge and archive it as configured."""
        return self.score_many(
            [recipe], split=split, fidelity=fidelity, source=source, record=record, charge=charge
        )[0]

    def score_many(
        self,
        recipes: Sequence[Recipe],
        *,
        split: str = "search",
        fidelity: str = "full",
        source: str = "agent",
        record: bool = True,
        charge: bool = True,
        pay_cached: bool = False,
    ) -> list[Scored]:
        """Score a batch of recipes: cache hits first, the misses at once through the back-end.

        The problem stays the single writer of the cache, the ledger and the archive, whatever
        back-end computed the scores; results come back in the order of ``recipes``.
        ``pay_cached``: a cache hit this ledger never paid for is charged too (anchors: their
        scores were made for the references, outside any budget, but an agent seeded with them
        pays for them like for any other evaluation; once per ledger, so a resume is free).
        """
        evaluator = self._evaluator(fidelity)
        keys = [self.model_key(r) for r in recipes]
        cached = [self.is_cached(r, fidelity, split) for r in recipes]
        todo = [i for i, (k, c) in enumerate(zip(keys, cached)) if not c and k not in keys[:i]]
        t0 = time.perf_counter()
        computed = dict(zip(todo, self.backend([recipes[i] for i in todo], evaluator, split)))
        wall = (time.perf_counter() - t0) / max(1, len(todo))
        out = []
        for i, recipe in enumerate(recipes):
            fresh = i in computed
            if fresh:
                details = computed[i]
                # The charge is made durable before the scores are cached: a kill between the two
                # leaves a charged recipe that is not cached, which the ledger then marks as paid
                # (see _charge); the other order would leave a cached recipe never charged.
                cost = self._charge(keys[i], fidelity, split, charge)
                if evaluator.cache is not None:
                    for task in self.tasks:
                        evaluator.cache.put(evaluator.cache_key(keys[i], task, split),
                                            details[task.name])  # fmt: skip
            else:  # a cache hit (or a repeat within this batch, now cached)
                self.cache_hits += 1
                cost = 0.0
                if (
                    pay_cached
                    and charge
                    and split == "search"
                    and not self.ledger.charged(keys[i], fidelity)
                ):
                    cost = self.cost(fidelity)
                    self.ledger.charge(keys[i], fidelity, cost)
                details = (
                    evaluator.score_tasks(None, self.tasks, split, model_key=keys[i])
                    if evaluator.cache is not None
                    else computed[keys.index(keys[i])]
                )
            out.append(self._record(recipe, details, fresh, cost, split, fidelity, source,
                                    record and charge, wall))  # fmt: skip
        return out

    def _charge(self, key: str, fidelity: str, split: str, charge: bool) -> float:
        """Charge one freshly computed score (ledger line first); returns the evaluations charged."""
        if split == "test":
            self.test_evaluations += 1
            return 0.0
        if not charge or split != "search":
            return 0.0
        if self.evaluator.cache is not None and self.ledger.settle(key, fidelity):
            # a fresh score of a recipe the ledger has paid for: an earlier process was killed
            # between the charge and the cache (with a cache, nothing else recomputes it)
            return 0.0
        cost = self.cost(fidelity)
        self.ledger.charge(key, fidelity, cost)
        return cost

    @property
    def spent(self) -> float:
        """Evaluations charged so far, this process and every earlier one sharing the ledger."""
        return self.ledger.spent

    def enable_cheap(self, examples: int) -> None:
        """Give the problem its cheap fidelity: the evaluator capped at ``examples`` per task."""
        self.cheap_evaluator = self.evaluator.capped(examples)

    def _record(
        self, recipe: Recipe, details: dict[str, TaskScore], fresh: bool, cost: float,
        split: str, fidelity: str, source: str, record: bool, wall: float,
    ) -> Scored:  # fmt: skip
        vector = np.array([self.headline(t, details[t.name]) for t in self.tasks])
        if record and split == "search" and fidelity == "full":
            if self.archive.get(recipe.hash) is None:
                entry = self.archive.add(
                    recipe.hash, recipe.to_dict(), dict(zip(self.objectives, vector.tolist())),
                    evaluations=math.ceil(self.spent - 1e-9), source=source,
                    extra={"wall_s": round(wall, 4), "cached": not fresh,
                           "details": {n: s.__dict__ for n, s in details.items()}},
                )  # fmt: skip
                for listener in self.listeners:
                    listener(entry)
        return Scored(recipe, vector, details, not fresh, cost, fidelity)

    def local_backend(
        self, recipes: Sequence[Recipe], evaluator: Evaluator, split: str
    ) -> list[dict[str, TaskScore]]:
        """The in-process back-end: the recipes scored here, uncached, each shared path prefix once
        (bit for bit what assembling and scoring each alone gives; evaluator.prefix_cache_bytes)."""
        return self.pool.score_recipes(recipes, evaluator, self.tasks, split)

    # -- references and the ideal point ------------------------------------------------------
    def reference_recipes(self) -> dict[str, Recipe]:
        """Every single model of the pool and the plain parameter merges, by name."""
        refs = {f"model:{name}": Recipe.single(name) for name in self.pool.names}
        experts = self.pool.experts
        if experts:
            refs["merge:linear"] = Recipe(merge=uniform_merge("linear", experts))
            refs["merge:task_arithmetic"] = Recipe(
                merge=param_merge("task_arithmetic", {e: 1.0 for e in experts})
            )
            refs["merge:ties"] = Recipe(merge=param_merge("ties", {e: 1.0 for e in experts},
                                                          density=0.5))  # fmt: skip
            refs["merge:dare_ties"] = Recipe(
                merge=param_merge("dare_ties", {e: 1.0 for e in experts}, density=0.5)
            )
        return refs

    def anchor_recipes(self) -> dict[str, Recipe]:
        """What a search may be seeded with: exactly the references (each pool model as it is,
        and the plain merges), so that a front seeded with them is never below their own."""
        return self.reference_recipes()

    def references(self) -> dict[str, np.ndarray]:
        """Search-split scores of the single models and plain merges (not charged to agents)."""
        if self._references is None:
            out = {}
            for name, recipe in self.reference_recipes().items():
                scored = self.score(recipe, source=f"reference:{name}", record=False, charge=False)
                self.reference_evaluations += 0 if scored.cached else 1
                out[name] = scored.vector
            self._references = out
        return self._references

    @property
    def ideal(self) -> np.ndarray:
        """z*: the best single pool model per task (search split), as scored (never floored)."""
        if self._ideal is None:
            singles = [v for n, v in self.references().items() if n.startswith("model:")]
            self._ideal = ideal_point(np.stack(singles))
        return self._ideal

    @property
    def metrics(self) -> list[str]:
        """Each task's headline metric: the problem's metric, else the task's own."""
        return [self.metric or t.metric for t in self.tasks]

    @property
    def nadir(self) -> np.ndarray:
        """The score that normalises to 0 on each task: what a model that knows nothing scores.

        0 for exact match and token accuracy (nothing right). A log-likelihood is negative, so
        f / z* would reverse its order: its zero is the uniform guess over the vocabulary, −ln V
        (or the worst single model, where one scores below that), so that a merged model's
        normalised log-likelihood is positive where it beats guessing and 1 at z*.
        """
        if self._nadir is None:
            guess = -math.log(self._vocab_size())
            worst = np.min(np.stack([v for n, v in self.references().items()
                                     if n.startswith("model:")]), axis=0)  # fmt: skip
            self._nadir = np.array([min(guess, w) if m in NEGATIVE_METRICS else 0.0
                                    for m, w in zip(self.metrics, worst)])  # fmt: skip
        return self._nadir

    @property
    def flat(self) -> np.ndarray:
        """Per task, whether no single model scores above the nadir (z* == nadir)."""
        return np.isclose(self.ideal, self.nadir, rtol=0.0, atol=1e-12)

    @property
    def top(self) -> np.ndarray:
        """The score that normalises to 1 on each task: z*, or nadir + 1 where z* == nadir.

        z* == nadir means no single model does better than knowing nothing (e.g. every model
        scores 0 exact match); dividing by z* there would blow one correct answer up to ~1e4,
        so that task keeps the metric's own scale (exact match: the fraction right).
        """
        if self._top is None:
            flat = self.flat
            if np.any(flat):
                log.warning(
                    "no single model scores above %s on task(s) %s; their scores are not "
                    "divided by z* but kept on the metric's own scale",
                    self.nadir[flat].tolist(),
                    [o for o, f in zip(self.objectives, flat) if f],
                )
            # z* barely above the nadir: dividing by it blows each right answer up as well
            reach = (self.ideal - self.nadir) / (self.perfect - self.nadir)
            weak = ~flat & (reach < WEAK_REACH)
            if np.any(weak):
                log.warning(
                    "the best single model reaches only %s of the metric's range on task(s) %s "
                    "(z* %s): dividing by z* multiplies their scores by up to %s, so they weigh "
                    "most in the hypervolume and its ceiling",
                    np.round(reach[weak], 4).tolist(), [o for o, w in zip(self.objectives, weak) if w],
                    self.ideal[weak].tolist(), np.round(1 / reach[weak]).tolist(),
                )  # fmt: skip
            self._top = np.where(flat, self.nadir + 1.0, self.ideal)
        return self._top

    def _vocab_size(self) -> int:
        """Entries of the models' output distribution (the base's config, else the tokenizer)."""
        config = self.pool.checkpoints[self.pool.names[0]].config
        size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
        return int(size or len(self.evaluator.tokenizer))

    def normalised(self, vector: np.ndarray) -> np.ndarray:
        """Scores as (f − nadir) / (top − nadir): f / z* for exact match and token accuracy."""
        return normalise(np.asarray(vector, float), self.top, self.nadir)

    def fitness(self, vector: np.ndarray) -> float:
        """The scalar a single-objective agent maximises: the macro-average normalised score.

        The seam through which a problem states its own objective (``RecyclingProblem``
        overrides it); agents read it here instead of defining their own.
        """
        return float(np.mean(self.normalised(vector)))

    @property
    def perfect(self) -> np.ndarray:
        """The raw scores of a perfect model: each task's metric at its best (see METRIC_BEST)."""
        return np.array([METRIC_BEST[m] for m in self.metrics])

    def hypervolume_ceiling(self) -> float:
        """The hypervolume of a perfect model: no front, on any split, can exceed it.

        Scores are normalised by z* on the search split, so the ceiling is prod_t (best_t −
        nadir_t) / (top_t − nadir_t): 1 / z*_t a task for exact match. A front can beat the
        references by at most ``ceiling / reference HV − 1`` — a target above that is out of
        reach by arithmetic, not by search. A log-likelihood task no single model scores above
        its nadir on keeps the metric's own scale (see ``top``), where a perfect model's 0 sits
        ln V above the nadir: the ceiling is then no useful bound, and a warning says so.
        """
        flat = [o for o, m, f in zip(self.objectives, self.metrics, self.flat)
                if f and m in NEGATIVE_METRICS]  # fmt: skip
        if flat:
            log.warning(
                "no single model beats the nadir on log-likelihood task(s) %s: the ceiling puts "
                "a perfect model there at -nadir on the metric's scale, no useful bound",
                flat,
            )
        return self.hypervolume_of(self.perfect)

    def hypervolume_of(self, vectors: np.ndarray) -> float:
        """Hypervolume of the non-dominated subset of raw score vectors (normalised as above)."""
        pts = self.normalised(np.atleast_2d(vectors))
        if len(pts) == 0:
            return 0.0
        return hypervolume(pts[non_dominated(pts)], self.reference_point)

    def hypervolume_curve(self) -> list[tuple[int, float]]:
        """(evaluations spent, hypervolume of the archive's front so far)."""
        return self.archive.hypervolume_curve(self.top, self.reference_point, self.nadir)

    def best(self, preference: np.ndarray, kind: str = "tchebycheff") -> Entry:
        """The archive's best entry for a preference, on the normalised search scores."""
        return self.archive.best(preference, self.top, kind, self.nadir)


def build_problem(
    sources: Mapping[str, str | Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    *,
    archive_path: str | Path | None = None,
    cache_path: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    max_examples: int | None = None,
    cheap_examples: int | None = None,
    prefix_cache_bytes: int = 256 * 2**20,
    prompt_prefix: bool = True,
    merged_cache_bytes: int | None = None,
    metric: str | None = None,
) -> MergeProblem:
    """Wire a MergeProblem from checkpoint folders, tasks and a tokenizer folder."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cache = EvalCache(cache_path) if cache_path is not None else None
    evaluator = Evaluator(
        tokenizer,
        device=device,
        batch_size=batch_size,
        max_examples=max_examples,
        cache=cache,
        prefix_cache_bytes=prefix_cache_bytes,
        prompt_prefix=prompt_prefix,
    )
    objectives = [t.name for t in tasks]
    archive = Archive.open(archive_path, objectives) if archive_path else Archive(None, objectives)
    pool = ModelPool(sources, device=device, merged_cache_bytes=merged_cache_bytes)
    ledger = Path(archive_path).with_name("ledger.jsonl") if archive_path else None
    return MergeProblem(
        pool, tasks, evaluator, archive, metric=metric, cheap_examples=cheap_examples,
        ledger_path=ledger,
    )  # fmt: skip
