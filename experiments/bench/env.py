"""Benchmark MergeEnv's assembly: its cost against scoring, memory over many candidates, identity.

    python -m experiments.bench_env [--zoo default] [--assemblies 1000] [--scored 12] [--seed 0]

Prints, for random recipes of the env's recipe space on the chosen zoo:

1. assembly time per candidate (path over already-built sources: shared layers, per-slot KV
   index, hooks) and the time to build one parameter-level merge (done once per merge setting,
   then kept in the pool's LRU), against the time to score a candidate on the search split;
   the amortised ratio counts every merge build the candidates needed;
2. resident memory (RSS) before, during and after ``--assemblies`` assemblies, and the number of
   merged models the pool holds (bounded by its LRU);
3. that the identity path over the merged source (forced through the slot machinery) gives
   exactly the scores of the parameter-merged checkpoint written by the merge engine and loaded
   back with ``from_pretrained``.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from merge_env.env import MergeEnv
from merge_env.pools.spec import zoo_problem
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import MERGED, Recipe, Slot

console = Console()


def rss_mb() -> float:
    """Resident set size of this process in MiB (Linux /proc; ru_maxrss elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_recipes(env: MergeEnv, n: int, seed: int) -> list[Recipe]:
    """``n`` random recipes of the env's space: a lattice merge and a random free path."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        merge = env.merges[int(rng.integers(len(env.merges)))]
        length = int(rng.integers(1, env.t_max + 1))
        path = tuple(
            Slot(
                env.sources[int(rng.integers(len(env.sources)))],
                int(rng.integers(env.L)),
                float(env.coefficients[int(rng.integers(len(env.coefficients)))]),
            )
            for _ in range(length)
        )
        out.append(Recipe(merge=merge, path=path))
    return out


def time_assembly(problem: MergeProblem, recipes: Sequence[Recipe]) -> tuple[float, float, int]:
    """(mean seconds per path assembly with merges built, mean seconds per merge build, builds)."""
    pool = problem.pool
    built0 = pool.merges_built
    merge_s = 0.0
    assemble_s = 0.0
    for recipe in recipes:
        t0 = time.perf_counter()
        pool.merged_model(recipe.merge)  # a no-op when the merge is in the LRU
        t1 = time.perf_counter()
        pool.assemble(recipe)
        assemble_s += time.perf_counter() - t1
        merge_s += t1 - t0
    builds = pool.merges_built - built0
    return assemble_s / len(recipes), merge_s / max(builds, 1), builds


def time_scoring(problem: MergeProblem, recipes: Sequence[Recipe]) -> float:
    """Mean seconds to score an assembled candidate on every task's search split (no cache)."""
    ev = problem.evaluator
    total = 0.0
    for recipe in recipes:
        model = problem.pool.assemble(recipe)
        t0 = time.perf_counter()
        ev.score_tasks(model, problem.tasks, "search", model_key=None)
        total += time.perf_counter() - t0
    return total / len(recipes)


def identity_check(problem: MergeProblem, recipe: Recipe) -> tuple[bool, float]:
    """Scores of the slot-assembled identity path over ``merged`` vs the written merge checkpoint.

    Returns (exactly equal, max |logit difference| on the first search batch).
    """
    from merge_env.merging.engine import run_merge
    from merge_env.search.assemble import load_causal_lm

    pool = problem.pool
    slots = tuple(Slot(MERGED, layer, 1.0) for layer in range(pool.num_layers))
    model_slots = _force_slots(pool, Recipe(merge=recipe.merge, path=slots))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "merged"
        run_merge(recipe.merge, out, resolve=pool._resolve, progress=False)
        written = load_causal_lm(out).eval()
        ev = problem.evaluator
        a = ev.score_tasks(model_slots, problem.tasks, "search", model_key=None)
        b = ev.score_tasks(written, problem.tasks, "search", model_key=None)
        equal = all(a[t.name] == b[t.name] for t in problem.tasks)
        prompts = [ex.prompt + ex.answer for ex in problem.tasks[0].search[:32]]
        batch = ev.tokenizer(prompts, return_tensors="pt", padding=True)
        with torch.no_grad():
            la = model_slots(**batch).logits
            lb = written(**batch).logits
    return equal, float((la - lb).abs().max())


def _force_slots(pool, recipe: Recipe):  # noqa: ANN001, ANN202 - bench helper
    """Assemble ``recipe`` through SlotLayers even though its path is the identity."""
    original = Recipe.is_identity
    Recipe.is_identity = lambda self, num_layers: False  # type: ignore[method-assign]
    try:
        return pool.assemble(recipe)
    finally:
        Recipe.is_identity = original  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Run the three measurements and print them."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--zoo", default="default")
    p.add_argument("--assemblies", type=int, default=1000)
    p.add_argument("--scored", type=int, default=12, help="candidates scored for the ratio")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    problem = zoo_problem(args.zoo)
    env = MergeEnv(problem)
    recipes = random_recipes(env, args.assemblies, args.seed)

    # warm up: the first assembly imports and initialises lazily
    problem.pool.assemble(recipes[0])
    sample = recipes[: args.scored]
    assemble_s, merge_s, builds = time_assembly(problem, sample)
    score_s = time_scoring(problem, sample)
    amortised = (assemble_s * len(sample) + merge_s * builds) / len(sample)

    gc.collect()
    rss = {0: rss_mb()}
    t0 = time.perf_counter()
    for i, recipe in enumerate(recipes, 1):
        problem.pool.assemble(recipe)
        if i in (100, args.assemblies // 2, args.assemblies):
            gc.collect()
            rss[i] = rss_mb()
    loop_s = time.perf_counter() - t0
    equal, max_diff = identity_check(problem, recipes[0])

    n_examples = sum(len(t.search) for t in problem.tasks)
    table = Table(title=f"MergeEnv assembly on zoo {args.zoo!r} ({args.threads} threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("path assembly per candidate (merge built)", f"{assemble_s * 1e3:.2f} ms"),
        ("parameter merge build (once per setting)", f"{merge_s * 1e3:.1f} ms"),
        (f"scoring per candidate ({n_examples} search examples)", f"{score_s * 1e3:.1f} ms"),
        ("assembly / scoring", f"{assemble_s / score_s:.2%}"),
        (f"amortised incl. {builds} merge builds / scoring", f"{amortised / score_s:.2%}"),
        (f"{args.assemblies} assemblies (merges from LRU or rebuilt)", f"{loop_s:.1f} s"),
        *[(f"RSS after {i} assemblies", f"{mb:.0f} MiB") for i, mb in rss.items()],
        ("merged models held (LRU bound)", f"{len(problem.pool._merged)}"),
        ("identity path over merged == merged checkpoint", "exact" if equal else "DIFFERS"),
        ("max |logit diff| identity path vs checkpoint", f"{max_diff:.2e}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    return {
        "assemble_s": assemble_s, "merge_s": merge_s, "score_s": score_s,
        "ratio": assemble_s / score_s, "amortised_ratio": amortised / score_s,
        "rss_start_mb": rss[0], "rss_end_mb": rss[args.assemblies],
        "identity_equal": float(equal), "identity_max_diff": max_diff,
    }  # fmt: skip


if __name__ == "__main__":
    main()
