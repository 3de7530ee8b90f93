"""Apply a mergekit-style recipe: ``python -m experiments.merge recipe.yaml OUT [--shard-size 2GB]``.

An existing mergekit YAML in the ``models:`` form runs unchanged. Errors in the recipe or the
checkpoints, and system errors (permission denied, disk full), print one line and exit with
status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merge_env.errors import MergeGymError
from merge_env.merging.lean import lean_merge

if TYPE_CHECKING:
    from merge_env.merging.plan import ParamMerge

_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """Bytes from '2GB', '500MB', '1.5GiB' or a plain integer (argparse type)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (use e.g. 2GB, 500MB, 1GiB)")
    value, unit, suffix = float(m.group(1)), m.group(2), m.group(3)
    scale = 1024 ** " KMGT".index(unit) if suffix.startswith("I") and unit else _UNITS[unit]
    size = int(value * scale)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return size


def run_merge(spec: ParamMerge, out: str, **kwargs: Any) -> Path:
    """The full engine (merging/engine.py: torch, every method), imported when first needed."""
    from merge_env.merging.engine import run_merge as run

    return run(spec, out, **kwargs)


def return_freed_memory() -> None:
    """Have glibc hand large freed blocks back to the system at once (a process-wide policy,
    so set by this command only).

    glibc raises its mmap threshold to the largest block freed, so after the first big tensor
    the full-size temporaries of a merge come from the heap and stay resident once freed; a
    fixed 1 MiB threshold keeps them mapped apart (measured on the bench pool's embedding
    under TIES: peak RSS 1.60 GB instead of 1.79-1.89 GB).
    """
    try:
        ctypes.CDLL(None).mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: its allocator's own policy stands
        pass


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.merge",
        description="Merge checkpoints with a mergekit-style YAML recipe (models: form).",
    )
    p.add_argument("recipe", help="mergekit YAML (merge_method, base_model, models, parameters)")
    p.add_argument("out", help="output checkpoint folder (written atomically)")
    p.add_argument("--shard-size", type=parse_size, default=parse_size("5GB"),
                   help="largest safetensors shard, e.g. 2GB (default 5GB)")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT folder")
    p.add_argument("--workers", type=int, default=None,
                   help="tensors merged at once (default: torch threads, at most 4)")  # fmt: skip
    p.add_argument("--fast-ties", action="store_true",
                   help="rank equal magnitudes at a density cut by position (O(n)) instead of "
                   "reproducing mergekit's full sort; differs from mergekit only there")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad recipe or checkpoint)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if not args.fast_ties:  # a plain linear merge runs without torch (merging/lean.py)
            out = lean_merge(
                args.recipe, args.out, shard_size=args.shard_size, overwrite=args.overwrite,
                workers=args.workers,
            )  # fmt: skip
            if out is not None:
                print(f"merged linear -> {out}")
                return 0
        from merge_env.merging.plan import ParamMerge

        return_freed_memory()
        spec = ParamMerge.load_yaml(args.recipe)
        if args.fast_ties:
            spec = dataclasses.replace(spec, exact_ties=False)
        out = run_merge(
            spec, args.out, shard_size=args.shard_size, progress=not args.no_progress,
            overwrite=args.overwrite, workers=args.workers,
        )  # fmt: skip
    except MergeGymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permission denied, disk full, ...: the system's words, one line
        print(f"error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130
    print(f"merged {spec.merge_method} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
