"""The test-hypervolume ceiling of a pool: how far any front could beat the references at all.

    MERGEGYM_CACHE=DIR python results/hv_ceiling/ceiling.py --pool zoo --seeds 0 1 2 --out F.jsonl
    MERGEGYM_CACHE=DIR python results/hv_ceiling/ceiling.py --pool smollm2 --seeds 0 --out F.jsonl

For each training seed it loads the pool as the main job does (``experiments.run.make_problem``
on ``conf/config.yaml`` with ``pool=<pool> pool.seed=<seed>``; a pool missing from the cache
would be built, so each row names the pool folder it read and whether the cache gained a
folder), scores the references
(single models + plain merges) on the search and test splits, and writes one JSON line a seed:
z* (the best single model a task, search split), the references' hypervolume on both splits,
the ceiling (``MergeProblem.hypervolume_ceiling``: a perfect model) and the headroom, the most
any front can beat the references by on test. Seeds already in ``--out`` are skipped (resume).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments import report  # noqa: E402
from experiments.protocol import compose_config  # noqa: E402
from experiments.run import make_problem  # noqa: E402


def measure(pool: str, seed: int, overrides: list[str]) -> dict:
    cache = Path(os.environ["MERGEGYM_CACHE"])
    before = set(cache.iterdir())
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_config(
            [f"pool={pool}", f"pool.seed={seed}", "logger=none", f"run_dir={tmp}", *overrides]
        )
        t0 = time.perf_counter()
        problem = make_problem(cfg, Path(tmp))
        refs = problem.references()
        tests = report.reference_test_scores(problem)
        ref_search = problem.hypervolume_of(np.stack(list(refs.values())))
        ref_test = problem.hypervolume_of(np.stack(list(tests.values())))
        ceiling = problem.hypervolume_ceiling()
        built = sorted(p.name for p in set(cache.iterdir()) - before)
        return {
            "pool": pool,
            "seed": seed,
            "overrides": overrides,
            "sources": {n: str(p) for n, p in problem.pool.paths.items()},
            "built": built,
            "tasks": problem.objectives,
            "z_star": problem.ideal.tolist(),
            "singles_test": {n: v.tolist() for n, v in tests.items() if n.startswith("model:")},
            "reference_hypervolume_search": ref_search,
            "reference_hypervolume_test": ref_test,
            "hypervolume_ceiling": ceiling,
            "headroom_test": ceiling / ref_test - 1.0,
            "seconds": round(time.perf_counter() - t0, 1),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pool", required=True, help="conf/pool/<pool>.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--set", nargs="*", default=[], help="more Hydra overrides")
    ap.add_argument("--out", type=Path, required=True, help="a JSON-lines file (appended)")
    args = ap.parse_args(argv)
    if not os.environ.get("MERGEGYM_CACHE"):
        ap.error("set MERGEGYM_CACHE to the folder holding the built pools")
    done = set()
    if args.out.exists():
        done = {json.loads(line)["seed"] for line in args.out.read_text().splitlines() if line}
    for seed in args.seeds:
        if seed in done:
            print(f"seed {seed}: already in {args.out}")
            continue
        row = measure(args.pool, seed, args.set)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(
            f"{args.pool} seed {seed}: z* {np.round(row['z_star'], 4).tolist()}, references "
            f"test {row['reference_hypervolume_test']:.4f}, ceiling "
            f"{row['hypervolume_ceiling']:.4f}: headroom {100 * row['headroom_test']:+.1f} % "
            f"({row['seconds']} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
