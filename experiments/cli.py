"""The Hydra entry point the jobs share: compose ``conf/<config_name>.yaml``, run the job, and turn
a bad configuration or input into one line on stderr and exit status 2.

A MergeGym error raised while Hydra instantiates a group (a missing model folder, an unknown
merge method) reaches us wrapped in Hydra's ``full_key`` text; it is unwrapped to its own
message. A run folder that the failed job left holding only Hydra's own files is removed, so a
typo leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from experiments.config_check import check_device, check_top_level
from merge_env.errors import MergeGymError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def hydra_entry(config_name: str, job: Callable[[DictConfig], float], log: logging.Logger) -> Any:
    """The ``main`` of a job: Hydra's app over ``conf/<config_name>.yaml`` calling ``job(cfg)``."""

    @hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)
    def main(cfg: DictConfig) -> float:
        folders = [Path(HydraConfig.get().runtime.output_dir)] if HydraConfig.initialized() else []
        explicit = cfg.get("run_dir") if "run_dir" in cfg else None
        if explicit and not Path(explicit).exists():  # one the job will make: ours to clean
            folders.append(Path(explicit))
        try:
            check_top_level(cfg, Path(CONF_DIR) / f"{config_name}.yaml")
            if "device" in cfg:  # every job has one; moe.py has no validation of its own
                check_device(cfg.device)
            return job(cfg)
        except (MergeGymError, InstantiationException) as exc:
            error = our_error(exc)
            if error is None:
                raise
            fail(str(error), log, folders)

    return main


def our_error(exc: BaseException) -> MergeGymError | None:
    """The MergeGym error behind ``exc`` (itself, or the cause Hydra wrapped), else None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MergeGymError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def fail(message: str, log: logging.Logger, folders: Sequence[Path] = ()) -> NoReturn:
    """Print ``error: message`` on stderr, keep it in the job's log file, remove those of
    ``folders`` that hold only what Hydra wrote, and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), None)
    for handler in logging.getLogger().handlers:  # the file only: the terminal has it already
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    for folder in folders:
        remove_if_only_hydra(folder)
    raise SystemExit(2)


def remove_if_only_hydra(run_dir: Path) -> None:
    """Delete ``run_dir`` when it holds nothing but Hydra's ``.hydra/`` and job log files."""
    if not run_dir.is_dir():
        return
    entries = list(run_dir.iterdir())
    if all(e.name == ".hydra" or (e.is_file() and e.suffix == ".log") for e in entries):
        shutil.rmtree(run_dir, ignore_errors=True)
        parent = run_dir.parent  # Hydra's outputs/ or a sweep folder, if this made it
        if parent != Path.cwd() and Path.cwd() in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
