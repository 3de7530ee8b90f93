"""Multi-objective tools: preferences, scalarisation, the non-dominated front, hypervolume, archive.

Every objective is MAXIMISED (task scores such as exact match). Following HM3 (DESIGN.md §1.1), a
score vector f is normalised by the ideal point z* (the best single model per task), a preference
λ is drawn from Dirichlet(1) on the simplex, and f is scalarised by the weighted sum Σ λ_k f_k or by
the Tchebycheff form −max_k λ_k |f_k − z*_k| (Miettinen, *Nonlinear Multiobjective Optimization*,
1999, §3.4; Zhang & Li, MOEA/D, IEEE TEVC 2007, eq. 3), which also reaches non-convex parts of the
front. Hypervolume is computed exactly by moocore (Fonseca et al. 2006; Guerreiro & Fonseca 2017).

The archive is an append-only JSONL file, one scored recipe per line, written and fsynced before
`Archive.add` returns, so a killed run loses at most the line being written, and `Archive.load`
detects and repairs that. One process writes an archive at a time.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import moocore
import numpy as np

from merge_env.errors import ConfigError

logger = logging.getLogger(__name__)

SCALARISATIONS = ("weighted_sum", "tchebycheff")


# ----------------------------------------------------------------------------- preferences, scores
def sample_preferences(
    n: int, n_objectives: int, rng: np.random.Generator, alpha: float = 1.0
) -> np.ndarray:
    """Return `n` preferences of shape (n, n_objectives), rows on the simplex, ~ Dirichlet(alpha)."""
    if n < 0 or n_objectives < 1:
        raise ConfigError(
            f"sample_preferences: need n >= 0, n_objectives >= 1: {n}, {n_objectives}"
        )
    if not alpha > 0:
        raise ConfigError(f"sample_preferences: Dirichlet alpha must be > 0, got {alpha}")
    return rng.dirichlet(np.full(n_objectives, float(alpha)), size=n)


def ideal_point(score_rows: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
    """Return the ideal point z*: the per-objective maximum over the score rows (n, k)."""
    rows = np.asarray(score_rows, dtype=float)
    if rows.ndim != 2 or rows.shape[0] == 0:
        raise ConfigError(f"ideal_point: need a non-empty (n, k) score matrix, got {rows.shape}")
    return rows.max(axis=0)


def normalise(scores: np.ndarray, ideal: np.ndarray, nadir: np.ndarray | None = None) -> np.ndarray:
    """Return scores in units of the ideal point: f / z* by default, (f − nadir)/(z* − nadir) with a nadir.

    The default f / z* is DESIGN.md's choice: the best single model scores 1 on its task and a
    model scoring 0 stays at 0, so the reference point 0 means "solves nothing". It needs z* >= 0;
    a negative ideal (e.g. a log-likelihood headline) would flip the order, so it is an error —
    pass a nadir instead. Where z* == 0 (or z* == nadir), every model ties on that objective and it
    is left unscaled (divisor 1) with a warning, rather than dividing by zero.
    """
    f = np.asarray(scores, dtype=float)
    z = np.asarray(ideal, dtype=float)
    if f.shape[-1:] != z.shape:
        raise ConfigError(f"normalise: scores of shape {f.shape} do not match ideal {z.shape}")
    if nadir is None:
        if np.any(z < 0):
            raise ConfigError(
                f"normalise: ideal point {z.tolist()} has a negative entry; f / z* would reverse "
                "the order there — pass a nadir point to normalise as (f - nadir) / (z* - nadir)"
            )
        low, span = np.zeros_like(z), z
    else:
        low = np.asarray(nadir, dtype=float)
        if low.shape != z.shape:
            raise ConfigError(
                f"normalise: nadir of shape {low.shape} does not match ideal {z.shape}"
            )
        span = z - low
        if np.any(span < 0):
            raise ConfigError(f"normalise: nadir {low.tolist()} exceeds ideal {z.tolist()}")
    flat = np.isclose(span, 0.0, rtol=0.0, atol=1e-12)
    if np.any(flat):
        logger.warning("normalise: objectives %s have a zero range; unscaled", np.flatnonzero(flat))
    return (f - low) / np.where(flat, 1.0, span)


def _check_pref(f: np.ndarray, pref: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    f, pref = np.asarray(f, dtype=float), np.asarray(pref, dtype=float)
    if f.shape[-1:] != pref.shape[-1:]:
        raise ConfigError(
            f"{name}: scores {f.shape} and preference {pref.shape} differ in objectives"
        )
    if np.any(pref < 0) or not np.all(np.isfinite(pref)):
        raise ConfigError(f"{name}: preference must be finite and non-negative: {pref.tolist()}")
    return f, pref


def _scalar_or_array(x: np.ndarray) -> np.ndarray | float:
    return float(x) if np.ndim(x) == 0 else x


def weighted_sum(f: np.ndarray, pref: np.ndarray) -> np.ndarray | float:
    """Return Σ_k pref_k f_k over the last axis (f normalised); a float for one score vector."""
    f, pref = _check_pref(f, pref, "weighted_sum")
    return _scalar_or_array((f * pref).sum(axis=-1))


def tchebycheff(f: np.ndarray, pref: np.ndarray, ideal: np.ndarray) -> np.ndarray | float:
    """Return −max_k pref_k |f_k − ideal_k| over the last axis (higher is better; 0 at the ideal)."""
    f, pref = _check_pref(f, pref, "tchebycheff")
    z = np.asarray(ideal, dtype=float)
    if z.shape != f.shape[-1:]:
        raise ConfigError(f"tchebycheff: ideal of shape {z.shape} does not match scores {f.shape}")
    return _scalar_or_array(-(pref * np.abs(f - z)).max(axis=-1))


def scalarise(
    f: np.ndarray, pref: np.ndarray, ideal: np.ndarray, kind: str = "tchebycheff"
) -> np.ndarray | float:
    """Return the scalarised score of f under `pref`: kind is "weighted_sum" or "tchebycheff"."""
    if kind == "weighted_sum":
        return weighted_sum(f, pref)
    if kind == "tchebycheff":
        return tchebycheff(f, pref, ideal)
    raise ConfigError(f"scalarise: unknown kind {kind!r}; expected one of {SCALARISATIONS}")


# ----------------------------------------------------------------------------- front, hypervolume
def _as_points(points: np.ndarray, name: str) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim == 1:
        p = p[None, :] if p.size else p.reshape(0, 0)
    if p.ndim != 2:
        raise ConfigError(f"{name}: points must be a (n, k) matrix, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ConfigError(f"{name}: points contain NaN or inf")
    return p


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Return a boolean mask of the non-dominated rows of (n, k) points, all objectives maximised.

    Of several identical non-dominated rows only the first is kept, so the front holds each score
    vector once (the earliest recipe that reached it).
    """
    p = _as_points(points, "non_dominated")
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(moocore.is_nondominated(p, maximise=True, keep_weakly=False), dtype=bool)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Return the exact hypervolume dominated by `points` (maximised) and bounded below by `reference`.

    Points are expected already normalised (see `normalise`); with f / z* the natural reference is
    the origin. Points that do not strictly exceed the reference in every objective add nothing.
    """
    p = _as_points(points, "hypervolume")
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if p.shape[0] == 0:
        return 0.0
    if ref.shape != (p.shape[1],) or not np.all(np.isfinite(ref)):
        raise ConfigError(
            f"hypervolume: reference {ref.tolist()} does not fit {p.shape[1]} objectives"
        )
    p = p[np.all(p > ref, axis=1)]
    if p.shape[0] == 0:
        return 0.0
    return float(moocore.hypervolume(p, ref=ref, maximise=True))


# ----------------------------------------------------------------------------- archive
@dataclass(frozen=True)
class Entry:
    """One scored recipe, as stored on one line of the archive."""

    index: int
    recipe_hash: str
    recipe: dict
    scores: dict[str, float]
    test_scores: dict[str, float] | None
    evaluations: int
    source: str
    extra: dict = field(default_factory=dict)

    def vector(self, objectives: Sequence[str], split: str = "search") -> np.ndarray:
        """Return this entry's scores in `objectives` order (NaN where the split has no score)."""
        if split not in ("search", "test"):
            raise ConfigError(f"split must be 'search' or 'test', got {split!r}")
        s = self.scores if split == "search" else (self.test_scores or {})
        return np.array([s.get(o, math.nan) for o in objectives], dtype=float)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _check_scores(
    scores: Mapping[str, float], objectives: Sequence[str], where: str
) -> dict[str, float]:
    if not isinstance(scores, Mapping) or set(scores) != set(objectives):
        got = sorted(scores) if isinstance(scores, Mapping) else type(scores).__name__
        raise ConfigError(
            f"{where}: scores must have exactly the objectives {list(objectives)}: {got}"
        )
    out = {o: float(scores[o]) for o in objectives}
    bad = [o for o, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"{where}: non-finite score for {bad}")
    return out


def _entry_from_dict(d: Any, objectives: Sequence[str], where: str) -> Entry:
    """Build an Entry from a parsed JSON line, checking its fields (ConfigError naming `where`)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a JSON object, got {type(d).__name__}")
    names = [f.name for f in Entry.__dataclass_fields__.values()]
    if set(d) != set(names):
        raise ConfigError(f"{where}: fields {sorted(d)} differ from {sorted(names)}")
    if not all(isinstance(d[k], int) and d[k] >= 0 for k in ("index", "evaluations")):
        raise ConfigError(f"{where}: index and evaluations must be integers >= 0")
    if not isinstance(d["recipe"], dict) or not isinstance(d["extra"], dict):
        raise ConfigError(f"{where}: recipe and extra must be JSON objects")
    test = d["test_scores"]
    if test is not None:
        test = _check_scores(test, objectives, f"{where} (test_scores)")
    return Entry(
        index=d["index"],
        recipe_hash=str(d["recipe_hash"]),
        recipe=d["recipe"],
        scores=_check_scores(d["scores"], objectives, where),
        test_scores=test,
        evaluations=d["evaluations"],
        source=str(d["source"]),
        extra=d["extra"],
    )


def _fsync_dir(path: Path) -> None:
    # A new file's directory entry is only durable once the directory itself is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_durably(path: Path, data: bytes) -> None:
    # One write call per line: a kill can leave only a prefix of it, which Archive.load drops.
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


class Archive:
    """Every scored recipe of a run, in scoring order, mirrored line by line to a JSONL file.

    `objectives` names the maximised tasks and fixes the column order of `score_matrix`. Entries
    are re-read from their own JSON line when added, so an archive and its reload are equal.
    """

    def __init__(self, path: str | Path | None, objectives: Sequence[str]) -> None:
        """Start an empty archive at `path` (None: in memory only); an existing non-empty file is an error."""
        self.objectives: tuple[str, ...] = tuple(objectives)
        if not self.objectives or len(set(self.objectives)) != len(self.objectives):
            raise ConfigError(
                f"Archive: objectives must be non-empty and distinct, got {list(objectives)}"
            )
        self.path = None if path is None else Path(path)
        self.dropped_tail = False
        self._entries: list[Entry] = []
        self._by_hash: dict[str, Entry] = {}
        if self.path is not None:
            if self.path.exists() and self.path.stat().st_size > 0:
                raise ConfigError(
                    f"Archive: {self.path} already holds entries; use Archive.load or Archive.open to resume"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            _fsync_dir(self.path.parent)

    @classmethod
    def open(cls, path: str | Path, objectives: Sequence[str]) -> Archive:
        """Resume the archive at `path` if it holds entries, else start a new one there."""
        p = Path(path)
        if p.exists() and p.stat().st_size > 0:
            return cls.load(p, objectives)
        return cls(p, objectives)

    # -- writing
    def add(
        self,
        recipe_hash: str,
        recipe: Mapping[str, Any],
        scores: Mapping[str, float],
        evaluations: int,
        source: str,
        test_scores: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Entry:
        """Record one scored recipe: append its JSON line, flush and fsync, then return the Entry."""
        where = f"Archive.add({recipe_hash!r})"
        is_int = isinstance(evaluations, int | np.integer) and not isinstance(evaluations, bool)
        if not is_int or evaluations < 0:
            raise ConfigError(f"{where}: evaluations must be an integer >= 0, got {evaluations!r}")
        record = {
            "index": len(self._entries),
            "recipe_hash": str(recipe_hash),
            "recipe": dict(recipe),
            "scores": _check_scores(scores, self.objectives, where),
            "test_scores": None
            if test_scores is None
            else _check_scores(test_scores, self.objectives, where),
            "evaluations": int(evaluations),
            "source": str(source),
            "extra": dict(extra or {}),
        }
        try:
            line = json.dumps(record, default=_json_default, separators=(",", ":"))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{where}: recipe or extra is not JSON-serialisable: {e}") from e
        entry = _entry_from_dict(json.loads(line), self.objectives, where)
        if self.path is not None:
            _append_durably(self.path, line.encode("utf-8") + b"\n")
        self._append(entry)
        return entry

    def _append(self, entry: Entry) -> None:
        self._entries.append(entry)
        self._by_hash.setdefault(entry.recipe_hash, entry)

    # -- reading
    @classmethod
    def load(cls, path: str | Path, objectives: Sequence[str] | None = None) -> Archive:
        """Reload the archive at `path`, dropping (and reporting) a truncated or garbled last line.

        `objectives` defaults to the score keys of the first entry, in their stored order. A bad
        last line is what a kill mid-write leaves: it is dropped with a warning, `dropped_tail` is
        set, and the file is truncated so that later appends start on a clean line. A bad line
        anywhere else is corruption, not a crash, and raises ConfigError naming file and line.
        """
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"Archive.load: no archive file at {p}")
        data = p.read_bytes()
        lines = data.split(b"\n")  # the piece after the last b"\n" is b"" for a clean file
        starts = np.cumsum([0] + [len(s) + 1 for s in lines[:-1]]).tolist()
        numbered = [(i, s) for i, s in enumerate(lines) if s.strip()]
        parsed: list[tuple[int, Any]] = []
        drop_from: int | None = None
        for pos, (i, raw) in enumerate(numbered):
            try:
                obj = json.loads(raw.decode("utf-8"))
                if not isinstance(obj, dict):
                    raise ValueError(f"a JSON {type(obj).__name__}, not an object")
            except (UnicodeDecodeError, ValueError) as e:
                if pos < len(numbered) - 1:
                    raise ConfigError(
                        f"Archive.load: {p} line {i + 1} is not a JSON object ({e})"
                    ) from e
                drop_from = i  # only a torn or garbled write leaves a non-object last line
                continue
            parsed.append((i, obj))
        if objectives is None:
            if not parsed or not isinstance(parsed[0][1].get("scores"), dict):
                raise ConfigError(
                    f"Archive.load: {p} has no entry to infer objectives from; pass objectives"
                )
            objectives = list(parsed[0][1]["scores"])
        arch = cls(None, objectives)
        for i, d in parsed:
            # A well-formed object with wrong fields is not a torn write: refuse rather than drop.
            entry = _entry_from_dict(d, arch.objectives, f"Archive.load: {p} line {i + 1}")
            if entry.index != len(arch._entries):
                raise ConfigError(
                    f"Archive.load: {p} line {i + 1} has index {entry.index}, expected "
                    f"{len(arch._entries)} (two writers, or files concatenated?)"
                )
            arch._append(entry)
        arch.path = p
        arch._repair(data, starts, drop_from)
        return arch

    def _repair(self, data: bytes, starts: list[int], drop_from: int | None) -> None:
        """Truncate a bad tail (or add a missing final newline) so appends start on a clean line."""
        assert self.path is not None
        if drop_from is not None:
            cut = starts[drop_from]
            logger.warning(
                "Archive %s: dropped a truncated or garbled last line (line %d, %d bytes: %r); kept %d entries",
                self.path,
                drop_from + 1,
                len(data) - cut,
                data[cut : cut + 80],
                len(self._entries),
            )
            self.dropped_tail = True
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
        elif data and not data.endswith(b"\n"):
            # The whole line landed but its newline did not: keep the entry, finish the line.
            _append_durably(self.path, b"\n")

    def __len__(self) -> int:
        """Return the number of entries."""
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        """Iterate over entries in scoring order."""
        return iter(list(self._entries))

    @property
    def entries(self) -> list[Entry]:
        """Return a copy of the entries, in scoring order."""
        return list(self._entries)

    def get(self, recipe_hash: str) -> Entry | None:
        """Return the first entry recorded for `recipe_hash`, or None."""
        return self._by_hash.get(recipe_hash)

    def score_matrix(self, split: str = "search") -> np.ndarray:
        """Return the (n, k) score matrix in `objectives` order; test rows are NaN where not scored."""
        if not self._entries:
            return np.zeros((0, len(self.objectives)))
        return np.stack([e.vector(self.objectives, split) for e in self._entries])

    def front(self, split: str = "search") -> list[Entry]:
        """Return the non-dominated entries (first of equal score vectors), in scoring order."""
        m = self.score_matrix(split)
        scored = np.flatnonzero(np.all(np.isfinite(m), axis=1)) if m.size else np.zeros(0, int)
        mask = non_dominated(m[scored]) if scored.size else np.zeros(0, bool)
        return [self._entries[i] for i in scored[mask]]

    def best(
        self,
        pref: np.ndarray,
        ideal: np.ndarray,
        kind: str = "tchebycheff",
        nadir: np.ndarray | None = None,
    ) -> Entry:
        """Return the entry with the highest scalarised normalised search score under `pref`."""
        if not self._entries:
            raise ConfigError("Archive.best: the archive is empty")
        f = normalise(self.score_matrix(), ideal, nadir)
        values = np.atleast_1d(
            scalarise(f, pref, normalise(np.asarray(ideal, float), ideal, nadir), kind)
        )
        return self._entries[int(np.argmax(values))]

    def hypervolume_curve(
        self,
        ideal: np.ndarray,
        reference: np.ndarray | None = None,
        nadir: np.ndarray | None = None,
        split: str = "search",
    ) -> list[tuple[int, float]]:
        """Return (evaluations spent, hypervolume of the normalised front so far), one per entry.

        Scores are normalised by `ideal` (see `normalise`); `reference` is in those units and
        defaults to the origin (a model that scores 0 everywhere). Consecutive entries recorded at
        the same evaluation count collapse to the last one.
        """
        k = len(self.objectives)
        ref = np.zeros(k) if reference is None else np.asarray(reference, dtype=float)
        f = normalise(self.score_matrix(split), ideal, nadir) if self._entries else np.zeros((0, k))
        curve: list[tuple[int, float]] = []
        front, hv = np.zeros((0, k)), 0.0
        for entry, row in zip(self._entries, f):
            # HV changes only when the new point is not weakly dominated by the current front.
            if np.all(np.isfinite(row)) and not np.any(np.all(front >= row, axis=1)):
                front = np.vstack([front[~np.all(row >= front, axis=1)], row])
                hv = hypervolume(front, ref)
            if curve and curve[-1][0] == entry.evaluations:
                curve[-1] = (entry.evaluations, hv)
            else:
                curve.append((entry.evaluations, hv))
        return curve

    def to_dicts(self) -> list[dict[str, Any]]:
        """Return the entries as plain dicts (for logging or a DataFrame)."""
        return [asdict(e) for e in self._entries]
