"""The session-17 study's runner: build_zoo without the extras, add's rare digits patched.

Kept as run (``python scratch_variant_runner.py SEED ADD_RARE [KEY=VALUE ...]``); the same builds
now come from ``python -m experiments.build_zoo --seed S --set "rare_symbols=[...]" ...``.
"""

import sys
import time

from rich.console import Console

import merge_env.scoring.tasks.synthetic as syn
from experiments.build_zoo import print_regime, print_table, score_zoo, zoo_config
from merge_env.pools.regime import LAMBDA_GRIDS
from merge_env.pools.zoo import build_zoo


def main() -> None:
    seed, add_rare, settings = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    syn.RARE_SYMBOLS["add"] = add_rare  # before any training row is drawn
    console = Console(width=200)
    config = zoo_config("default", seed, settings)
    start = time.perf_counter()
    cache = f"/tmp/study/cache_{add_rare}"
    zoo = build_zoo(config, cache, progress=False, device="cpu", extras=False)
    console.print(
        f"add rare {add_rare} settings {settings} seed {seed}: base + experts "
        f"{zoo.build_seconds:.1f} s (wall {time.perf_counter() - start:.1f} s)"
    )
    scores = score_zoo(zoo, "test", "cpu")
    print_table(zoo, scores, console, f"TEST split ({len(zoo.tasks[0].test)} per task)")
    print_regime(zoo, console, "cpu", LAMBDA_GRIDS)


if __name__ == "__main__":
    main()
