"""Run tracking: Weights & Biases (offline unless logged in) or nothing.

W&B is imported only when the wandb logger is chosen, so ``logger=none`` starts no W&B process.
Metrics are namespaced: ``merge/`` per evaluation, ``charts/`` for curves, SB3's own keys as
SB3 names them (``train/``, ``rollout/``), all in the same run, and every chart's x axis is
``merge/evaluations`` (evaluations spent), the budget the agents are compared on.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merge_env.errors import ConfigError
from merge_env.search.archive import Entry

log = logging.getLogger(__name__)

STEP_METRIC = "merge/evaluations"


class Tracker:
    """Does nothing; the interface every tracker follows."""

    def log(self, metrics: Mapping[str, Any], step: float | None = None) -> None:
        """Record scalar metrics at ``step`` evaluations spent (None: where the run is now)."""

    def log_entry(self, entry: Entry, hypervolume: float) -> None:
        """Record one scored recipe and the hypervolume after it."""

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Record a table."""

    def log_image(self, key: str, path: Path) -> None:
        """Record an image file."""

    def log_artifact(self, name: str, kind: str, files: Sequence[Path]) -> None:
        """Record files as a versioned artifact."""

    def sb3_output(self) -> Any | None:
        """An SB3 KVWriter forwarding SB3's logs to this run, or None."""
        return None

    def finish(self) -> None:
        """Close the run."""


class WandbTracker(Tracker):
    """A W&B run; offline unless the user is logged in (or WANDB_MODE says otherwise)."""

    def __init__(
        self,
        project: str = "mergegym",
        entity: str | None = None,
        mode: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: Sequence[str] = (),
        run_config: Mapping[str, Any] | None = None,
        dir: str | Path | None = None,
        run_id: str | None = None,
    ) -> None:
        try:
            import wandb
        except ImportError as exc:  # a core dependency, but an environment may still lack it
            raise ConfigError(
                "logger=wandb needs the wandb package: pip install wandb (or choose logger=none)"
            ) from exc
        self._wandb = wandb
        if run_config is not None and not isinstance(run_config, dict):
            from omegaconf import OmegaConf  # a DictConfig when instantiated non-recursively

            run_config = OmegaConf.to_container(run_config, resolve=True)  # type: ignore[assignment]
        mode = mode or os.environ.get("WANDB_MODE") or ("online" if _logged_in() else "offline")
        if dir is not None:
            Path(dir).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=project, entity=entity, mode=mode, name=name, group=group, tags=list(tags),
            config=dict(run_config or {}), dir=str(dir) if dir else None, resume="allow",
            id=run_id,
        )  # fmt: skip
        # every chart against evaluations spent; a row logged without it takes the last value
        self.run.define_metric(STEP_METRIC)
        self.run.define_metric("*", step_metric=STEP_METRIC)
        log.info("W&B run %s (%s) in %s", self.run.name, mode, self.run.dir)

    def log(self, metrics: Mapping[str, Any], step: float | None = None) -> None:
        """Record scalar metrics at ``step`` evaluations spent (None: where the run is now)."""
        row = dict(metrics)
        if step is not None:
            # the x axis is a metric, not W&B's own step, which must only ever grow
            row[STEP_METRIC] = step
        self.run.log(row)

    def log_entry(self, entry: Entry, hypervolume: float) -> None:
        """Record one scored recipe (scores, evaluations, source) and the hypervolume."""
        metrics = {f"merge/{k}": v for k, v in entry.scores.items()}
        metrics.update(
            {
                STEP_METRIC: entry.evaluations,
                "merge/index": entry.index,
                "charts/hypervolume": hypervolume,
            }
        )
        self.run.log(metrics)

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Record a table."""
        self.run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_image(self, key: str, path: Path) -> None:
        """Record an image file."""
        self.run.log({key: self._wandb.Image(str(path))})

    def log_artifact(self, name: str, kind: str, files: Sequence[Path]) -> None:
        """Record files as an artifact."""
        art = self._wandb.Artifact(name, type=kind)
        for f in files:
            art.add_file(str(f))
        self.run.log_artifact(art)

    def sb3_output(self) -> Any:
        """An SB3 KVWriter that forwards SB3's records to this run."""
        from stable_baselines3.common.logger import KVWriter

        run = self.run

        class _Writer(KVWriter):
            def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
                scalars = {k: v for k, v in key_values.items() if isinstance(v, int | float)}
                if scalars:
                    run.log({**scalars, "sb3/timesteps": step})

            def close(self) -> None:
                pass

        return _Writer()

    def finish(self) -> None:
        """Close the run."""
        self.run.finish()


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")
