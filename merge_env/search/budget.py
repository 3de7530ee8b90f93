"""What a search may spend and what it has spent: the Budget an agent holds, the Ledger behind it.

Budget accounting is in *evaluations* (see ``search/problem.py``). Every charge is one line of
the ledger, appended and fsynced before the scores it paid for are cached, so a resumed run knows
what it has spent and a recipe charged by a killed process is recomputed but not charged again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from merge_env.errors import ConfigError
from merge_env.search.archive import append_durably

if TYPE_CHECKING:
    from merge_env.search.problem import MergeProblem

log = logging.getLogger(__name__)


class BudgetExhausted(Exception):
    """Raised inside an agent's loop when its evaluation budget is spent."""


class Budget:
    """Evaluations an agent may still spend on a problem (cache hits are free)."""

    def __init__(self, problem: MergeProblem, budget: float) -> None:
        if budget <= 0:
            raise ConfigError(f"budget must be positive, got {budget}")
        self.problem = problem
        self.start = problem.spent
        self.budget = float(budget)
        # the anchors' scores once the agent seeded them under this budget (agents/base.py)
        self.anchors: list | None = None

    @property
    def used(self) -> float:
        """Evaluations spent since this budget started."""
        return self.problem.spent - self.start

    @property
    def remaining(self) -> float:
        """Evaluations left (never negative)."""
        return max(0.0, self.budget - self.used)

    def exhausted(self, cost: float = 1.0) -> bool:
        """Whether a call costing ``cost`` evaluations would overrun the budget."""
        return self.used + cost > self.budget + 1e-9


class Ledger:
    """Every evaluation charged on a problem, one JSONL line per charge (none kept without a path).

    ``fallback`` is what counts as spent when there is no ledger file yet (an archive written
    before ledgers existed records its evaluations per entry).
    """

    def __init__(self, path: str | Path | None, fallback: float = 0.0) -> None:
        self.path = Path(path) if path is not None else None
        # (model key, fidelity) of every charge in the ledger: a recipe charged by a process
        # killed before it cached the scores is recomputed on resume but not charged again
        self._paid: set[tuple[str, str]] = set()
        # (model key, fidelity) of every charge, this process's too: what was ever paid for
        self._charged: set[tuple[str, str]] = set()
        self.spent = self._read(float(fallback))

    def charge(self, key: str, fidelity: str, cost: float) -> None:
        """Record a charge: the line is durable before ``spent`` moves."""
        if self.path is not None:
            line = json.dumps({"key": key, "fidelity": fidelity, "cost": cost}) + "\n"
            append_durably(self.path, line.encode())  # a kill leaves a prefix, cut off on reopening
        self.spent += cost
        self._charged.add((key, fidelity))

    def charged(self, key: str, fidelity: str) -> bool:
        """Whether this (key, fidelity) was ever charged in this ledger (any process)."""
        return (key, fidelity) in self._charged

    def settle(self, key: str, fidelity: str) -> bool:
        """Whether an earlier process already paid for this (key, fidelity); true only once."""
        if (key, fidelity) not in self._paid:
            return False
        self._paid.discard((key, fidelity))
        return True

    def _read(self, fallback: float) -> float:
        """Sum the ledger's charges and note what they paid for; a torn last line is cut off.

        Lines are appended with one write each, so a kill leaves at most a prefix of the last
        line: it is dropped and truncated here, so the next charge starts on a clean line.
        """
        if self.path is None or not self.path.is_file():
            return fallback
        data = self.path.read_bytes()
        complete, _, tail = data.rpartition(b"\n")
        lines = complete.split(b"\n") if complete else []
        spent = 0.0
        for number, raw in enumerate([*lines, tail], start=1):
            if not raw.strip():
                continue
            try:
                charge = json.loads(raw)
                spent += float(charge["cost"])
                self._paid.add((str(charge["key"]), str(charge["fidelity"])))
                self._charged.add((str(charge["key"]), str(charge["fidelity"])))
            except (ValueError, KeyError, TypeError):
                if number <= len(lines):  # not a torn write (those only hit the last line)
                    log.warning("%s: skipping unreadable line %d", self.path, number)
                    continue
                log.warning("%s: cutting off a torn last line (%d bytes)", self.path, len(tail))
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(data) - len(tail))
                    fh.flush()
                    os.fsync(fh.fileno())
                return spent
        if tail:  # the whole last line landed but not its newline
            append_durably(self.path, b"\n")
        return spent
