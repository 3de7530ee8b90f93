"""Is a pool in the fine-tune regime? The checks a pool must pass before its figures mean anything.

Real fine-tunes of one LLM stay close to their base, which is why plain merges of them keep most
of each expert's gain (DESIGN.md §2). A pool is judged here the way ``shared/tools/regime_check.py``
judges it from the outside with mergekit and plain transformers, but with MergeGym's own merge
engine and scorer, so every build can print it:

* each expert beats the base on its own task by at least ``min_gain``;
* TIES (density 0.5, issue 13's setting and mergekit's usual one; the TIES paper keeps the top
  20 %) or task arithmetic (weight 0.5 or 1.0, the
  task-arithmetic paper's range) keeps at least ``min_kept`` of every expert's own-task gain;
  both papers also pick the merged task vector's scaling λ on held-out validation data, so
  ``score_regime`` can add each method at the λ of ``LAMBDA_GRIDS`` that scores best on a
  validation split (the search split), judged like the fixed ones on the test split;
* no plain merge is within ``tolerance`` of every expert on every expert's task (else there is
  no front to search for).

Scores are exact match (teacher-forced greedy; the same number plain ``generate`` gives).

A kept share is a ratio of differences of three exact-match rates on the same test examples, so
its noise is large next to the 50 % line (about ±0.1 at the default zoo's 192 examples a task).
Given each row's per-example results, ``judge`` also gives every share a percentile bootstrap
interval over the test examples (``share_intervals``), and one for the statistic the verdict
reads, the best judged merge's worst share, with the best merge chosen again in every resample;
the report says whether the verdict is clear (that interval wholly on one side of the line) or
within the test split's noise.

``with_alone`` splits what the best judged merge loses of each gain (``own_vector_scores``):
each expert's own task vector alone, under that merge's method and scaling, scored on its task.
What it lacks of the expert is the scaling's cost; what the merge lacks of it, the other
experts' vectors' cost (negative when they add to the gain).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from merge_env.merging.plan import ParamMerge
from merge_env.scoring.tasks.task import Task
from merge_env.search.recipe import BASE, param_merge

# Every merge's kept share decides the regime except these, which are shown, not judged.
SHOWN_ONLY = ("linear uniform",)
# The scaling λ each paper selects on validation data: task arithmetic searches λ in (0, 1]
# (Ilharco et al. 2023); TIES scales its merged task vector by λ around its default of 1
# (Yadav et al. 2023). The regime's grids: steps of 0.1 over those ranges.
LAMBDA_GRIDS: dict[str, tuple[float, ...]] = {
    "task arith": tuple(round(0.1 * i, 1) for i in range(1, 11)),
    "ties d0.5": tuple(round(0.8 + 0.1 * i, 1) for i in range(11)),
}
# A merge pool over a pool's checkpoints and an evaluator (``make_scorer``): (ModelPool, Evaluator).
Scorer = tuple[Any, Any]
# Scores are fractions of a test split: a share of exactly 0.5 must not fail on rounding.
_EPS = 1e-9
# The shares' bootstrap: replicates, coverage, and a fixed seed so a report is reproducible.
N_BOOT = 2000
LEVEL = 0.95


# The fixed-weight merges the regime is judged by: row name -> (LAMBDA_GRIDS family, λ).
FIXED_MERGES: dict[str, tuple[str, float]] = {
    "ties d0.5": ("ties d0.5", 1.0),
    "task arith 0.5": ("task arith", 0.5),
    "task arith 1.0": ("task arith", 1.0),
}
_TUNED = re.compile(r"^(?P<family>.+) λ(?P<lam>\d+(?:\.\d+)?) \(val\)$")  # LAMBDA_GRIDS' λ


def regime_merges(experts: Sequence[str]) -> dict[str, ParamMerge]:
    """The plain merges of ``experts`` on the base that the regime is judged by (mergekit's forms)."""
    k = len(experts)
    merges = {name: scaled_merge(f, experts, lam) for name, (f, lam) in FIXED_MERGES.items()}
    merges["linear uniform"] = param_merge("linear", dict.fromkeys(experts, 1.0 / k), base=None)
    return merges


def scaled_merge(family: str, experts: Sequence[str], lam: float) -> ParamMerge:
    """A merge of ``LAMBDA_GRIDS``' ``family`` at scaling ``lam``: task arithmetic with every
    weight ``lam``; TIES (density 0.5, weights 1, normalised) with its merged vector times ``lam``
    (mergekit's ``lambda``)."""
    if family == "task arith":
        return param_merge("task_arithmetic", dict.fromkeys(experts, float(lam)))
    if family == "ties d0.5":
        parameters: dict[str, object] = {"normalize": True}
        if lam != 1.0:
            parameters["lambda"] = float(lam)
        return param_merge("ties", dict.fromkeys(experts, 1.0), density=0.5, parameters=parameters)
    raise ValueError(f"regime: no merge family {family!r} (known: {', '.join(LAMBDA_GRIDS)})")


def tuned_name(family: str, lam: float) -> str:
    """The row name of ``family`` at the λ chosen on validation data."""
    return f"{family} λ{lam:g} (val)"


def scaling_of(row: str) -> tuple[str, float] | None:
    """The (``LAMBDA_GRIDS`` family, λ) of a judged merge row, fixed or ``tuned_name``'s; None
    for any other row (the base, an expert, the shown-only linear merge)."""
    if row in FIXED_MERGES:
        return FIXED_MERGES[row]
    match = _TUNED.match(row)
    if match and match["family"] in LAMBDA_GRIDS:
        return match["family"], float(match["lam"])
    return None


@dataclass(frozen=True)
class Regime:
    """The verdict on one pool: gains, the share of each gain each merge keeps, and the checks."""

    gains: dict[str, float]  # expert's task -> expert minus base, own task
    kept: dict[str, dict[str, float]]  # merge -> expert's task -> share of the gain kept
    dominant: list[str]  # merges within tolerance of every expert on every expert's task
    min_gain: float
    min_kept: float
    # merge -> expert's task -> (low, high) bootstrap interval of the kept share; empty when
    # judged without per-example results
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    # bootstrap interval of the best judged merge's worst share (the merge re-chosen in every
    # resample); None when judged without per-example results
    verdict_interval: tuple[float, float] | None = None
    # expert's task -> the share of its gain its own task vector alone keeps under the best
    # judged merge's method and scaling (``own_vector_scores``); the rest of that merge's loss
    # is what the other experts' vectors cost. Empty when not measured.
    alone: dict[str, float] = field(default_factory=dict)

    @property
    def gains_hold(self) -> bool:
        """Every expert gains at least ``min_gain`` on its own task."""
        return all(g >= self.min_gain - _EPS for g in self.gains.values())

    @property
    def best_judged(self) -> tuple[str, float]:
        """The judged merge whose worst kept share is highest, and that share."""
        worst = {m: _worst(v.values()) for m, v in self.kept.items() if m not in SHOWN_ONLY}
        if not worst:
            return "none judged", math.nan
        name = max(worst, key=lambda m: -math.inf if math.isnan(worst[m]) else worst[m])
        return name, worst[name]

    @property
    def merging_holds(self) -> bool:
        """Some judged merge keeps at least ``min_kept`` of every expert's gain."""
        return self.best_judged[1] >= self.min_kept - _EPS

    @property
    def holds(self) -> bool:
        """All three checks pass."""
        return self.gains_hold and self.merging_holds and not self.dominant

    def sentences(self) -> list[tuple[bool, str]]:
        """(holds, sentence) per check, for a console report."""
        gains = ", ".join(f"{t} {g:+.3f}" for t, g in self.gains.items())
        name, share = self.best_judged
        kept = "; ".join(
            f"{m}: " + " ".join(_fmt(s) for s in self.kept[m].values()) for m in self.kept
        )
        if math.isnan(share):  # a share of no gain is undefined ("-" below), not a number
            losers = [t for t, g in self.gains.items() if not g > 0]
            best = f"none: {', '.join(losers) or 'no expert'} has no gain to keep"
        else:
            best = f"best {name} (worst share {share:.2f}{self._noise(name)})"
        return [
            (self.gains_hold, f"each expert gains >= {self.min_gain:.2f} on its task: {gains}"),
            (
                self.merging_holds,
                f"a plain merge keeps >= {self.min_kept:.0%} of every gain: {best}; "
                f"shares kept per expert: {kept}",
            ),
            (
                not self.dominant,
                "no plain merge is as good as every expert everywhere: "
                + (", ".join(self.dominant) or "none is"),
            ),
        ]

    def alone_sentence(self) -> str | None:
        """Where the best judged merge loses each gain, scaling or interference; None when
        ``alone`` was not measured."""
        if not self.alone:
            return None
        name = self.best_judged[0]
        parts = ", ".join(
            f"{t} {_fmt(self.alone[t])} -> {_fmt(self.kept[name][t])}" for t in self.alone
        )
        return (
            f"where {name} loses the gains (share kept by each expert's own task vector alone "
            f"at that scaling -> with the other experts' vectors): {parts}; 1 - alone is the "
            "scaling's cost (for TIES also the trim's), alone - merged the other vectors' "
            "(negative: they add to the gain)"
        )

    def _noise(self, merge: str) -> str:
        """Whether the verdict is clear against the test split's noise, and the merge's share
        intervals; "" without per-example results."""
        if self.verdict_interval is None or merge not in self.intervals:
            return ""
        lo, hi = self.verdict_interval
        if math.isnan(lo):
            return "; no interval: some resampled gain is not clearly positive"
        line = self.min_kept - _EPS
        where = (
            f"clearly below {self.min_kept:.0%}" if hi < line
            else f"clearly at or above {self.min_kept:.0%}" if lo >= line
            else f"within the test split's noise of {self.min_kept:.0%}"
        )  # fmt: skip
        per = ", ".join(
            f"{t} {self.kept[merge][t]:.2f} [{a:.2f}, {b:.2f}]"
            for t, (a, b) in self.intervals[merge].items()
        )
        return (
            f"; {LEVEL:.0%} bootstrap interval {lo:.2f}-{hi:.2f}, the best merge chosen again in "
            f"every resample: {where}; this merge's shares {per}"
        )


def _share(score: float, base: float, gain: float) -> float:
    """The share of an expert's ``gain`` over the base a ``score`` keeps; NaN without a gain."""
    return (score - base) / gain if gain > 0 else math.nan


def _fmt(share: float) -> str:
    return "-" if math.isnan(share) else f"{share:.2f}"


def with_alone(
    regime: Regime,
    scores: Mapping[str, Mapping[str, float]],
    sources: Mapping[str, str | Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    *,
    device: str = "cpu",
    scorer: Scorer | None = None,
) -> Regime:
    """``regime`` with ``alone`` measured (``own_vector_scores`` of its best judged merge, on the
    TEST split, against the base's ``scores``). Unchanged when the best judged row has no
    scaling, or has no worst share (an expert without a gain leaves every merge's worst share
    NaN, so there is no best merge to split). ``scorer``: a merge pool and evaluator over
    ``sources`` already built (``score_regime``'s), else one is built."""
    name, worst = regime.best_judged
    if scaling_of(name) is None or math.isnan(worst):
        return regime
    alone = own_vector_scores(sources, tasks, tokenizer_dir, name, device=device, scorer=scorer)
    base = scores[BASE]
    shares = {t: _share(alone[t], base[t], g) for t, g in regime.gains.items() if t in alone}
    return dataclasses.replace(regime, alone=shares)


def _worst(shares: Iterable[float]) -> float:
    """The smallest share; NaN if any expert has no gain to keep (or there are none)."""
    shares = list(shares)
    return math.nan if not shares or any(math.isnan(x) for x in shares) else min(shares)


def judge(
    scores: Mapping[str, Mapping[str, float]],
    experts: Mapping[str, str],
    *,
    min_gain: float = 0.30,
    min_kept: float = 0.50,
    tolerance: float = 0.05,
    examples: Mapping[str, Mapping[str, Sequence[bool]]] | None = None,
) -> Regime:
    """The regime verdict from exact-match ``scores[row][task]``.

    Rows: ``base``, one per expert (``experts`` maps the expert's task to its row name) and one
    per merge of ``regime_merges``. An expert that does not gain has a kept share of NaN.
    ``examples[row][task]``: the per-example results behind ``scores`` (``score_regime``'s);
    given, every kept share gets its bootstrap interval (``share_intervals``).
    """
    base = scores[BASE]
    gains = {t: scores[row][t] - base[t] for t, row in experts.items()}
    merges = [m for m in scores if m != BASE and m not in experts.values()]
    kept = {m: {t: _share(scores[m][t], base[t], g) for t, g in gains.items()} for m in merges}
    dominant = [
        m
        for m in merges
        if all(
            scores[m][t] >= scores[row][t] - tolerance - _EPS
            for row in experts.values()
            for t in experts
        )
    ]
    if examples is None:
        return Regime(gains, kept, dominant, min_gain, min_kept)
    intervals, verdict = share_intervals(examples, experts, merges)
    return Regime(gains, kept, dominant, min_gain, min_kept, intervals, verdict)


def share_intervals(
    examples: Mapping[str, Mapping[str, Sequence[bool]]],
    experts: Mapping[str, str],
    merges: Sequence[str],
    *,
    n_boot: int = N_BOOT,
    level: float = LEVEL,
    seed: int = 0,
) -> tuple[dict[str, dict[str, tuple[float, float]]], tuple[float, float]]:
    """Percentile bootstrap intervals of every merge's kept shares over the test examples, and
    of the statistic the verdict reads.

    Each replicate resamples every expert task's examples with replacement (the same draw for
    the base, the expert and every merge: they answered the same questions) and recomputes
    (merge - base) / (expert - base); a replicate whose resampled gain is not positive has no
    share. Returns ({merge: {task: (low, high)}}, (low, high) of the best judged merge's worst
    share, the best merge chosen again in each replicate); (nan, nan) where more than the
    interval's tail share of the replicates has no value (the gain is not clearly positive).
    """
    rng = np.random.default_rng(seed)
    draws: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # task -> (base, gain) per replicate
    index: dict[str, np.ndarray] = {}
    for task, row in experts.items():
        base = _correct(examples, BASE, task)
        expert = _correct(examples, row, task)
        if len(expert) != len(base):
            raise ValueError(f"regime: {row!r} and base scored different {task!r} examples")
        index[task] = rng.integers(0, len(base), (n_boot, len(base)))
        base_mean = base[index[task]].mean(1)
        gain = expert[index[task]].mean(1) - base_mean
        draws[task] = (base_mean, np.where(gain > 0, gain, np.nan))
    alpha = (1.0 - level) / 2
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    worst: dict[str, np.ndarray] = {}  # merge -> its worst share per replicate (NaN: none)
    for merge in merges:
        shares = []
        for task in experts:
            base_mean, gain = draws[task]
            answers = _correct(examples, merge, task)
            if len(answers) != index[task].shape[1]:
                raise ValueError(f"regime: {merge!r} and base scored different {task!r} examples")
            shares.append((answers[index[task]].mean(1) - base_mean) / gain)
        intervals[merge] = {t: _interval(v, alpha) for t, v in zip(experts, shares, strict=True)}
        worst[merge] = np.min(np.stack(shares), axis=0)  # NaN stays NaN
    judged = [worst[m] for m in merges if m not in SHOWN_ONLY]
    best = np.max(np.stack(judged), axis=0) if judged else np.full(n_boot, np.nan)
    return intervals, _interval(best, alpha)


def _correct(
    examples: Mapping[str, Mapping[str, Sequence[bool]]], row: str, task: str
) -> np.ndarray:
    """Row ``row``'s per-example results on ``task`` as 0/1 floats; KeyError names what is missing."""
    try:
        return np.asarray(examples[row][task], dtype=np.float64)
    except KeyError as err:
        raise KeyError(f"regime: no per-example results of {row!r} on {task!r}") from err


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    """The (alpha, 1 - alpha) quantiles of the finite ``values``; (nan, nan) when more than an
    ``alpha`` share of them is not finite (the quantiles would describe another population)."""
    finite = values[np.isfinite(values)]
    if not len(finite) or len(finite) < (1.0 - alpha) * len(values):
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


@dataclass(frozen=True)
class TaskVectors:
    """Each expert's task vector (expert minus base) by part of the model: its norm relative to
    the base's, and the cosine between every two experts' vectors. Parts: ``embeddings`` (input
    embeddings and LM head) and ``body`` (every other tensor)."""

    relative: dict[str, dict[str, float]]  # part -> expert -> |expert - base| / |base|
    cosine: dict[str, dict[tuple[str, str], float]]  # part -> (expert, expert) -> cosine

    def sentences(self) -> list[str]:
        """One line per part, for a console report."""
        out = []
        for part, rel in self.relative.items():
            sizes = ", ".join(f"{e} {r:.1%}" for e, r in rel.items())
            if rel and not any(rel.values()):  # e.g. LoRA experts leave the embeddings as they are
                out.append(f"{part}: unchanged by every expert (no task vector, no cosine)")
                continue
            # a pair with an unchanged expert has no direction to compare: "n/a", not "nan"
            cos = ", ".join(f"{a}-{b} {c:.2f}" if math.isfinite(c) else f"{a}-{b} n/a"
                            for (a, b), c in self.cosine[part].items())  # fmt: skip
            out.append(f"{part}: size against the base {sizes}; cosines {cos or '-'}")
        return out


def task_vectors(base: str | Path, experts: Mapping[str, str | Path]) -> TaskVectors:
    """The experts' task vectors against ``base``, read one tensor at a time (a 135M model's
    vectors never sit in memory whole); CheckpointError names a tensor an expert lacks or holds
    in another shape."""
    from merge_env.errors import CheckpointError
    from merge_env.merging.checkpoint import Checkpoint

    origin = Checkpoint(base)
    models = {name: Checkpoint(path) for name, path in experts.items()}
    embeddings = {*origin.arch.embed_names, origin.arch.head_name}
    names = list(experts)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    sums: dict[str, dict[object, float]] = {}  # part -> expert or pair -> sum of products
    base_sq: dict[str, float] = {}  # part -> squared norm of the base
    for tensor in origin.names:
        b = origin.get(tensor).double()
        deltas = {}
        for name, model in models.items():
            if tensor not in model:
                raise CheckpointError(f"{model.path}: tensor {tensor!r} of the base not found")
            value = model.get(tensor)
            if tuple(value.shape) != tuple(b.shape):
                raise CheckpointError(
                    f"{model.path}: tensor {tensor!r} has shape {tuple(value.shape)}, "
                    f"the base's {tuple(b.shape)}"
                )
            deltas[name] = value.double() - b
        part = "embeddings" if tensor in embeddings else "body"
        acc = sums.setdefault(part, {})
        base_sq[part] = base_sq.get(part, 0.0) + float((b * b).sum())
        for name, d in deltas.items():
            acc[name] = acc.get(name, 0.0) + float((d * d).sum())
        for a, c in pairs:
            acc[(a, c)] = acc.get((a, c), 0.0) + float((deltas[a] * deltas[c]).sum())
    relative: dict[str, dict[str, float]] = {}
    cosine: dict[str, dict[tuple[str, str], float]] = {}
    for part in ("body", "embeddings"):
        if part not in sums:
            continue
        acc, norm = sums[part], base_sq[part]
        relative[part] = {n: math.sqrt(acc[n] / norm) if norm else math.nan for n in names}
        cosine[part] = {
            (a, c): acc[(a, c)] / math.sqrt(acc[a] * acc[c]) if acc[a] and acc[c] else math.nan
            for a, c in pairs
        }
    return TaskVectors(relative, cosine)


def own_vector_scores(
    sources: Mapping[str, str | Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    row: str,
    *,
    split: str = "test",
    device: str = "cpu",
    scorer: Scorer | None = None,
) -> dict[str, float]:
    """Exact match on its own task of each expert's task vector alone under judged merge
    ``row``'s method and scaling (``scaling_of``): base + λ τ for task arithmetic, TIES of that
    expert alone (its vector trimmed to density 0.5, times λ). Against ``row``'s own score this
    splits the merge's loss of a gain into the scaling's part and the other experts' part.
    ``sources`` and ``scorer`` as ``score_regime``'s (each expert named for its task)."""
    by_name = {t.name: t for t in tasks}
    experts = [n for n in sources if n != BASE]
    missing = [n for n in experts if n not in by_name]
    if missing:
        raise ValueError(f"regime: experts {missing} are named for no task of {sorted(by_name)}")
    merges = {expert: own_vector_merge(row, expert) for expert in experts}  # errors first
    pool, evaluator = scorer or make_scorer(sources, tokenizer_dir, device)
    out = {}
    for expert, spec in merges.items():
        model = pool.merged_model(spec)
        out[expert] = evaluator.score_tasks(model, [by_name[expert]], split)[expert].exact_match
    return out


def own_vector_merge(row: str, expert: str) -> ParamMerge:
    """Judged merge ``row``'s method and scaling applied to ``expert``'s task vector alone;
    ValueError naming ``row`` when it is no judged merge with a scaling."""
    scaling = scaling_of(row)
    if scaling is None:
        raise ValueError(f"regime: {row!r} is not a judged merge with a scaling")
    family, lam = scaling
    return scaled_merge(family, [expert], lam)


def make_scorer(
    sources: Mapping[str, str | Path], tokenizer_dir: str | Path, device: str
) -> Scorer:
    """The merge pool over ``sources`` (each checkpoint read once) and the evaluator with the
    pool's tokenizer, for ``score_regime`` and ``own_vector_scores`` to share."""
    from transformers import AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator
    from merge_env.search.assemble import ModelPool

    pool = ModelPool(sources, device=device)
    return pool, Evaluator(AutoTokenizer.from_pretrained(tokenizer_dir), device=device)


def score_regime(
    sources: Mapping[str, str | Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    *,
    split: str = "test",
    device: str = "cpu",
    grids: Mapping[str, Sequence[float]] | None = None,
    validation_split: str = "search",
    curves: dict[str, dict[float, float]] | None = None,
    examples: dict[str, dict[str, list[bool]]] | None = None,
    scorer: Scorer | None = None,
    metric: str = "exact_match",
) -> dict[str, dict[str, float]]:
    """Exact match (or ``metric``) of the base, every expert and every ``regime_merges`` merge
    on ``split``.

    ``sources`` are the pool's checkpoints by name (``base`` and one per expert, named for its
    task); merges are built in memory by the merge engine, as a search builds them. ``grids``
    (e.g. ``LAMBDA_GRIDS``): each family is also scored on ``validation_split`` at every λ of
    its grid, and the λ with the best mean exact match over the tasks (the first on a tie) is
    scored on ``split`` as row ``tuned_name(family, λ)``; ``curves`` receives {family: {λ: mean}}.
    ``examples`` receives {row: {task: per-example correct on ``split``}} (for ``judge``).
    ``scorer``: ``make_scorer(sources, ...)``'s pool and evaluator, else built here.
    ``metric`` other than exact match (the domain pool's log-likelihood) also picks each λ;
    ``examples`` (per-example exact match) are then not kept.
    """
    if split == validation_split and grids:
        raise ValueError(f"regime: λ chosen on {split!r} cannot be judged on the same split")
    if metric != "exact_match" and examples is not None:
        raise ValueError(f"regime: per-example results are exact match's, not {metric}'s")
    pool, evaluator = scorer or make_scorer(sources, tokenizer_dir, device)
    experts = [n for n in sources if n != BASE]

    def measured(model: object, on: str) -> dict[str, float]:
        scores = evaluator.score_tasks(model, tasks, on)
        return {task: score.get(metric) for task, score in scores.items()}

    def judged(name: str, model: object) -> dict[str, float]:
        """``metric`` on ``split``; exact match from the per-example results (``score_tasks``'
        very sweep), kept in ``examples``."""
        if metric != "exact_match":
            return measured(model, split)
        per = {
            t: [e.correct for e in ex]
            for t, ex in evaluator.task_examples(model, tasks, split).items()
        }
        if examples is not None:
            examples[name] = per
        return {t: float(np.mean(c)) for t, c in per.items()}  # a split is never empty

    out = {name: judged(name, pool.models[name]) for name in sources}
    for name, spec in regime_merges(experts).items():
        out[name] = judged(name, pool.merged_model(spec))
    for family, grid in (grids or {}).items():
        curve = {}
        for lam in grid:
            val = measured(pool.merged_model(scaled_merge(family, experts, lam)), validation_split)
            curve[float(lam)] = sum(val.values()) / len(val)
        best = max(curve, key=curve.__getitem__)  # max keeps the first of equals
        name = tuned_name(family, best)
        out[name] = judged(name, pool.merged_model(scaled_merge(family, experts, best)))
        if curves is not None:
            curves[family] = curve
    return out


@dataclass(frozen=True)
class Assessment:
    """Everything a regime report reads (``assess_regime``)."""

    scores: dict[str, dict[str, float]]  # row -> task -> TEST exact match (``score_regime``)
    curves: dict[str, dict[float, float]]  # family -> λ -> mean SEARCH exact match
    regime: Regime  # the verdict, its intervals and the best merge's loss split
    vectors: TaskVectors


def assess_regime(
    sources: Mapping[str, str | Path],
    tasks: Sequence[Task],
    tokenizer_dir: str | Path,
    *,
    device: str = "cpu",
    grids: Mapping[str, Sequence[float]] | None = LAMBDA_GRIDS,
) -> Assessment:
    """The regime of a pool (``sources``: ``base`` and one expert per task, named for it), as
    ``build_zoo`` prints it and ``experiments.figures`` records it: the TEST scores (each
    ``grids`` family also at the λ chosen on the SEARCH split), the verdict with its bootstrap
    intervals and ``with_alone``'s split, and the task vectors; one merge pool for all of it."""
    scorer = make_scorer(sources, tokenizer_dir, device)
    curves: dict[str, dict[float, float]] = {}
    examples: dict[str, dict[str, list[bool]]] = {}
    scores = score_regime(
        sources, tasks, tokenizer_dir, split="test", device=device, grids=grids, curves=curves,
        examples=examples, scorer=scorer,
    )  # fmt: skip
    experts = {n: p for n, p in sources.items() if n != BASE}
    regime = judge(scores, {t: t for t in experts}, examples=examples)
    regime = with_alone(regime, scores, sources, tasks, tokenizer_dir, device=device, scorer=scorer)
    return Assessment(scores, curves, regime, task_vectors(sources[BASE], experts))
