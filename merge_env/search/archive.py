"""The archive: every scored recipe of a run, append-only JSONL, durable line by line.

The archive is an append-only JSONL file, one scored recipe per line, written and fsynced before
`Archive.add` returns, so a killed run loses at most the line being written, and `Archive.load`
detects and repairs that. One process writes an archive at a time. The front, hypervolume and
scalarisation it reports come from ``search/pareto.py``.
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

import numpy as np

from merge_env.errors import ConfigError
from merge_env.search.pareto import hypervolume, non_dominated, normalise, scalarise, weighted_sum

logger = logging.getLogger(__name__)


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


def fsync_dir(path: Path) -> None:
    """Sync a folder: a new file's directory entry is only durable once its folder is synced."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, data: bytes) -> None:
    """Append ``data`` in one write and fsync it: a kill can leave only a prefix of it."""
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
            fsync_dir(self.path.parent)

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
            append_durably(self.path, line.encode("utf-8") + b"\n")
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
            append_durably(self.path, b"\n")

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
        """Return the entry with the highest scalarised normalised search score under `pref`.

        Only the front competes, and a tie goes to the higher weighted sum (an augmented
        Tchebycheff: a preference with a zero weight, or Tchebycheff's max, ties entries that
        differ only where the max does not look, e.g. (1.0, 0.5) and (0.9, 0.9) at an ideal of
        0.9 under λ = (1, 0); the first of a tie could be a dominated entry or the one that
        merely reaches the ideal).
        """
        if not self._entries:
            raise ConfigError("Archive.best: the archive is empty")
        front = self.front()  # search scores are finite (checked on add and load): never empty
        m = np.stack([e.vector(self.objectives, "search") for e in front])
        f = normalise(m, ideal, nadir)
        values = np.atleast_1d(
            scalarise(f, pref, normalise(np.asarray(ideal, float), ideal, nadir), kind)
        )
        tied = np.flatnonzero(values >= values.max() - 1e-12)
        tiebreak = np.atleast_1d(weighted_sum(f[tied], pref))
        return front[int(tied[np.argmax(tiebreak)])]

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
