"""The evaluation cache: scores keyed by (model, task, split, scorer) in SQLite, durable per row."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

from merge_env.errors import ConfigError
from merge_env.scoring.evaluate import TaskScore


class EvalCache:
    """Scores keyed by string in SQLite (WAL, one row per score, each committed as it is put).

    A process killed mid-write, or a WAL file cut short, loses at most the score being written:
    SQLite ignores a WAL frame whose transaction did not finish. Safe to share between processes
    on one machine; WAL needs a local filesystem (not NFS).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        """Open (creating if needed) the database; an unreadable file raises ConfigError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit survives power loss too; one fsync is nothing next to a model eval.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, exact_match REAL,"
                " token_accuracy REAL, loglik REAL, n INTEGER)"
            )
        except sqlite3.DatabaseError as err:
            raise ConfigError(
                f"{self.path}: evaluation cache unreadable ({err}); delete it to start afresh"
            ) from err
        return conn

    def get(self, key: str) -> TaskScore | None:
        """Return the score stored under ``key``, or None."""
        with self._lock:
            row = self._conn.execute(
                "SELECT exact_match, token_accuracy, loglik, n FROM scores WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        # SQLite stores NaN as NULL; a broken merge legitimately scores NaN log-likelihood.
        em, acc, ll, n = (float("nan") if v is None else v for v in row)
        return TaskScore(float(em), float(acc), float(ll), int(n))

    def put(self, key: str, score: TaskScore) -> None:
        """Store ``score`` under ``key`` and commit at once."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO scores VALUES (?, ?, ?, ?, ?)",
                (key, score.exact_match, score.token_accuracy, score.loglik, score.n),
            )

    def __len__(self) -> int:
        """Return the number of stored scores."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM scores").fetchone()[0])

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def __getstate__(self) -> dict[str, Any]:
        """Pickle as the path alone (a worker process reopens the same file)."""
        return {"path": str(self.path)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Reopen the database after unpickling."""
        self.__init__(state["path"])  # type: ignore[misc]
