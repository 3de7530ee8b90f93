"""Which expert's task vector costs add its gain? TIES d0.5 (λ 1) and task arithmetic 0.5 of
every pair of a SmolLM2 pool's experts, and of all three, scored on the TEST split with the
builder's merge engine and scorer (session 39; results/smollm2/README.md).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python results/smollm2/pairs_v5l.py POOL_ROOT [POOL_ROOT ...]
"""

from __future__ import annotations

import itertools
import sys
import time

from merge_env.pools.regime import make_scorer, scaled_merge
from merge_env.pools.smollm2 import load_smollm2_pool
from merge_env.search.recipe import BASE


def exact_match_on_test(evaluator, model: object, tasks) -> dict[str, float]:
    """Exact match of ``model`` on each task's TEST split."""
    scores = evaluator.score_tasks(model, tasks, "test")
    return {t: s.exact_match for t, s in scores.items()}


def main(roots: list[str]) -> None:
    for root in roots:
        pool = load_smollm2_pool(root)
        sources = {BASE: pool.base, **pool.experts}
        models, evaluator = make_scorer(sources, pool.tokenizer_dir, "cpu")
        experts = list(pool.experts)
        tasks = pool.tasks

        rows = {
            name: exact_match_on_test(evaluator, models.models[name], tasks) for name in sources
        }
        gain = {t: rows[t][t] - rows[BASE][t] for t in experts}
        print(f"pool {root} (seed {pool.config.seed}), TEST exact match; share of each gain kept")
        print("  " + "  ".join(f"{n}: " + " ".join(f"{v:.3f}" for v in rows[n].values())
                               for n in sources))  # fmt: skip
        subsets = [*itertools.combinations(experts, 2), tuple(experts)]
        for family, lam in (("ties d0.5", 1.0), ("task arith", 0.5)):
            for subset in subsets:
                start = time.perf_counter()
                em = exact_match_on_test(
                    evaluator, models.merged_model(scaled_merge(family, subset, lam)), tasks
                )
                shares = "  ".join(
                    f"{t} {em[t]:.3f} ({(em[t] - rows[BASE][t]) / gain[t]:+.2f})" for t in subset
                )
                print(f"  {family} {lam:g} of {'+'.join(subset):<18} {shares}"
                      f"   [{time.perf_counter() - start:.0f} s]", flush=True)  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
