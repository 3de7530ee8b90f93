"""Build the default zoo's base and experts into an empty cache, timing each training phase.

    python results/zoo_v5_intel/timed_build.py CACHE_DIR [--seed S]

The build is `merge_env.pools.zoo.build_zoo`'s own (same code, 2 threads, same weights: the
printed digest is `build_zoo`'s); each phase (the base, then each expert) prints its seconds and
its milliseconds per step over every 100 steps, so a slow build can be told apart from a slow
stretch of it, and two hosts compared step for step.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import merge_env.pools.zoo as zoo_module
from experiments.build_zoo import core_digest, zoo_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cache_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train = zoo_module.finetune

    def timed(*pos: Any, steps: int, on_step: Any = None, **kw: Any) -> list[float]:
        start = last = time.perf_counter()
        per_100: list[float] = []

        def tick(step: int, loss: float) -> None:
            nonlocal last
            if on_step is not None:
                on_step(step, loss)
            if (step + 1) % 100 == 0:
                now = time.perf_counter()
                per_100.append(round((now - last) * 10, 2))  # ms a step over 100 steps
                last = now

        losses = train(*pos, steps=steps, on_step=tick, **kw)
        took = time.perf_counter() - start
        print(f"phase {steps} steps {took:.1f} s; ms/step per 100: {per_100}", flush=True)
        return losses

    zoo_module.finetune = timed
    start = time.perf_counter()
    zoo = zoo_module.build_zoo(zoo_config("default", args.seed), args.cache_dir, progress=False)
    print(f"total {time.perf_counter() - start:.1f}")
    print(f"digest {core_digest(zoo)}")


if __name__ == "__main__":
    main()
