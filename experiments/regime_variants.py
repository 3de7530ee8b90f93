"""Train the default zoo's experts again under other fine-tune settings and print the regime.

    python -m experiments.regime_variants --seed 1                         # the zoo's own settings
    python -m experiments.regime_variants --seed 1 --set expert_lr=2e-4
    python -m experiments.regime_variants --seed 1 --set "expert_steps=[300,300,300]"
    python -m experiments.regime_variants --seed 1 --lora-rank 8 --lora-alpha 16 --set expert_lr=2e-3

The zoo (``--preset``, ``--seed``) is built or found in the cache; its base, data and seeds are
kept and only the experts are fine-tuned again (``merge_env.pools.zoo.train_expert_variant``:
``expert_steps``, ``expert_lr``, ``expert_replay``, or LoRA adapters merged into the weights), so
a regime question ("do gentler fine-tunes merge better?") is answered on the same base. With no
change the experts are the zoo's own, bit for bit, when ``MERGEGYM_TRAIN_THREADS`` is the count
the zoo was built with (``train_threads`` in its zoo.json; a mismatch is warned about). Prints
the fine-tune regime on the TEST split (as ``build_zoo``) and appends one JSON line per run to
``--out``/results.jsonl (the settings, training time, scores, gains, kept shares, verdict).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from experiments.build_zoo import parse_settings as parse_zoo_settings
from experiments.build_zoo import print_regime
from merge_env.errors import exit_on_error
from merge_env.pools.cache import train_threads
from merge_env.pools.finetune import LoraSpec
from merge_env.pools.zoo import EXPERT_KEYS, ZooConfig, build_zoo, train_expert_variant

log = logging.getLogger("mergegym.regime_variants")


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of the expert settings (``EXPERT_KEYS``, Python literals: 2e-4,
    [300,300,300]); ConfigError naming the pair."""
    return parse_zoo_settings(pairs, EXPERT_KEYS)


def variant_name(settings: dict[str, Any], lora: LoraSpec | None) -> str:
    """A folder-safe name for the run's settings ("zoo" for none)."""
    parts = [f"{k}={v}" for k, v in sorted(settings.items())]
    if lora is not None:
        parts.append(f"lora{lora.rank}a{lora.alpha:g}")
    name = "_".join(parts) or "zoo"
    return "".join(c if c.isalnum() or c in "=._-" else "-" for c in name)


def run(
    preset: str,
    seed: int,
    settings: dict[str, Any],
    lora: LoraSpec | None,
    out: Path,
    *,
    cache_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    console: Console | None = None,
) -> dict[str, Any]:
    """Train the variant's experts, print the regime, append and return its JSON record."""
    console = console or Console()
    config = dataclasses.replace(ZooConfig.preset(preset), seed=seed)
    zoo = build_zoo(config, cache_dir, progress=progress, device=device)
    if zoo.train_threads is not None and zoo.train_threads != train_threads():
        log.warning("the zoo was built with %s torch threads, this run trains its variants with "
                    "%s: even the zoo's own settings give other experts", zoo.train_threads,
                    train_threads())  # fmt: skip
    if zoo.installed:
        log.warning("the zoo is the copy shipped with MergeGym, trained on %s: experts "
                    "retrained here from its base are this machine's, so even the zoo's own "
                    "settings may give other experts", zoo.built_on.get("cpu", "another machine"))  # fmt: skip
    name = variant_name(settings, lora)
    folder = out / f"{preset}-seed{seed}" / name
    start = time.perf_counter()
    experts = train_expert_variant(zoo, folder, settings, lora=lora, progress=progress,
                                   device=device)  # fmt: skip
    seconds = time.perf_counter() - start
    console.print(f"zoo {preset!r} seed {seed}, experts {name}: trained in {seconds:.1f} s "
                  f"({train_threads()} threads) at {folder}")  # fmt: skip
    scores, regime = print_regime(dataclasses.replace(zoo, experts=experts), console, device)
    record = {
        "preset": preset, "seed": seed, "settings": settings, "name": name,
        "lora": dataclasses.asdict(lora) if lora else None, "train_seconds": round(seconds, 1),
        "train_threads": train_threads(), "scores": scores, "gains": regime.gains,
        "kept": regime.kept, "kept_intervals": regime.intervals, "kept_alone": regime.alone,
        "dominant": regime.dominant, "best": list(regime.best_judged),
        "holds": regime.holds,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.regime_variants", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", default="default", choices=["default", "tiny"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help=f"expert settings: {', '.join(EXPERT_KEYS)}")  # fmt: skip
    parser.add_argument("--lora-rank", type=int, default=0, help="0: full fine-tunes (the zoo's)")
    parser.add_argument("--lora-alpha", type=float, default=16.0)
    parser.add_argument("--out", type=Path, default=Path("outputs/regime_variants"))
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = parse_settings(args.set)
    lora = LoraSpec(args.lora_rank, args.lora_alpha) if args.lora_rank else None
    run(args.preset, args.seed, settings, lora, args.out, cache_dir=args.cache_dir,
        device=args.device, progress=not args.no_progress)  # fmt: skip
    return 0


if __name__ == "__main__":
    exit_on_error(main)
