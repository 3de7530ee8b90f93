"""Benchmark parallel scoring: candidates scored per minute in-process and on 1, 2, ... Ray workers.

    python -m experiments.bench_parallel                       # default zoo, 1 and 2 CPU workers
    python -m experiments.bench_parallel --zoo tiny --candidates 24
    python -m experiments.bench_parallel --workers 1 2 4 8 --gpus-per-worker 1   # one actor per GPU
    python -m experiments.bench_parallel --address auto --workers 8 16          # a running cluster

The candidates are random recipes of the black-box agents' genome (parameter merge + aligned path),
all distinct, scored uncached on every task's search split. Each Ray pool first scores one warm-up
recipe per worker (actor start, pool load, first forward), which the timing leaves out: a search
pays it once. The in-process row runs on this process's torch threads, for reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from transformers.utils import logging as hf_logging

from agents.genome import Genome
from merge_env.pools.zoo import ZooConfig, build_zoo
from merge_env.scoring.parallel import RayBackend, ray_init
from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import BASE, Recipe

console = Console()

GPU_NOTE = (
    "Per GPU (not measured on this CPU machine): an actor scores one candidate at a time, "
    "assembling it (a parameter merge is built once per weight setting, kept in an LRU bounded by merged_cache_bytes) and running one "
    "batched forward sweep over every task, so candidates/min grow about linearly with actors "
    "while a candidate takes far longer than the driver's share (proposing it, writing its "
    "SQLite row: milliseconds). A zoo-sized model leaves an H100 mostly idle: "
    "num_gpus_per_worker=0.5 or 0.25 packs 2-4 actors on it. Each actor holds the whole pool "
    "plus an LRU of merged copies (2 GiB by default), which must fit in its share of GPU memory."
)


def distinct_recipes(problem: MergeProblem, n: int, seed: int) -> list[Recipe]:
    """n distinct random recipes of the genome agents' default search space."""
    genome, rng = Genome(problem), np.random.default_rng(seed)
    out: dict[str, Recipe] = {}
    while len(out) < n:
        for x in genome.sample(rng, n):
            r = genome.decode(x)
            out.setdefault(r.hash, r)
    return list(out.values())[:n]


def time_backend(backend, recipes: list[Recipe], problem: MergeProblem) -> tuple[float, list]:
    """Wall seconds to score ``recipes`` through ``backend``, and the scores."""
    t0 = time.perf_counter()
    scores = backend(recipes, problem.evaluator, "search")
    return time.perf_counter() - t0, scores


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark and print a result table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="default", help="zoo preset (default or tiny)")
    parser.add_argument("--cache-dir", default=None, help="zoo cache (default: MERGEGYM_CACHE)")
    parser.add_argument("--candidates", type=int, default=16, help="recipes per timed run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--max-examples", type=int, default=None, help="cap per task (all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in-process")
    parser.add_argument("--device", default="cpu", help="device of the in-process row")
    parser.add_argument("--skip-local", action="store_true", help="no in-process row")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)

    zoo = build_zoo(ZooConfig.preset(args.zoo), args.cache_dir)
    sources = {BASE: zoo.base, **zoo.experts}
    # no evaluation cache: every candidate is scored
    problem = build_problem(sources, zoo.tasks, zoo.tokenizer_dir, device=args.device,
                            max_examples=args.max_examples)  # fmt: skip
    n_ex = sum(min(len(t.search), args.max_examples or 10**9) for t in problem.tasks)
    recipes = distinct_recipes(problem, args.candidates + max(args.workers), args.seed)
    warm, timed = recipes[args.candidates :], recipes[: args.candidates]
    rows: list[tuple[str, int, float]] = []
    reference = None
    if not args.skip_local:
        problem.local_backend(warm[:1], problem.evaluator, "search")
        seconds, reference = time_backend(problem.local_backend, timed, problem)
        rows.append((f"in-process ({args.device}, {args.threads} threads)", 1, seconds))
    owns = ray_init(args.address)
    same = True
    try:
        for w in args.workers:
            backend = RayBackend(
                sources, zoo.tasks, zoo.tokenizer_dir, num_workers=w,
                num_gpus_per_worker=args.gpus_per_worker, num_cpus_per_worker=args.cpus_per_worker,
            )  # fmt: skip
            try:
                backend(warm[:w], problem.evaluator, "search")
                seconds, scores = time_backend(backend, timed, problem)
            finally:
                backend.close()
            device = backend.device + (
                f" x{args.gpus_per_worker:g}" if args.gpus_per_worker else ""
            )
            rows.append((f"ray ({device})", w, seconds))
            reference = reference or scores
            same &= _close(scores, reference)
    finally:
        if owns:
            import ray

            ray.shutdown()
    _print(rows, args, n_ex, same)


def _close(a: list, b: list) -> bool:
    return all(
        abs(x[t].token_accuracy - y[t].token_accuracy) < 1e-6 for x, y in zip(a, b) for t in x
    )


def _print(
    rows: list[tuple[str, int, float]], args: argparse.Namespace, n_ex: int, same: bool
) -> None:
    table = Table(title=f"Parallel scoring: {args.candidates} candidates, zoo {args.zoo!r}, "
                        f"{n_ex} examples each, {os.cpu_count()} CPU cores, load average "
                        f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    for col in ("back-end", "workers", "seconds", "candidates/min", "vs 1 worker"):
        table.add_column(col, justify="left" if col == "back-end" else "right")
    one = next((s for name, w, s in rows if name.startswith("ray") and w == 1), None)
    for name, w, seconds in rows:
        rate = 60.0 * args.candidates / seconds
        ratio = f"{one / seconds:.2f}x" if one and name.startswith("ray") else ""
        table.add_row(name, str(w), f"{seconds:.1f}", f"{rate:.1f}", ratio)
    console.print(table)
    console.print(f"scores identical across back-ends: {'yes' if same else 'NO'}")
    console.print(GPU_NOTE)


if __name__ == "__main__":
    main()
