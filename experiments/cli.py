"""The Hydra entry point the jobs share: compose ``conf/<config_name>.yaml``, run the job, and turn
a MergeGym error (bad config, unreadable checkpoint...) into one logged line and exit status 2."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from merge_env.errors import MergeGymError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def hydra_entry(config_name: str, job: Callable[[DictConfig], float], log: logging.Logger) -> Any:
    """The ``main`` of a job: Hydra's app over ``conf/<config_name>.yaml`` calling ``job(cfg)``."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def main(cfg: DictConfig) -> float:
        try:
            return job(cfg)
        except MergeGymError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None

    return main
