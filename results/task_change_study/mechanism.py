"""The task-change study's mechanism check: what the other experts' vectors cost through each part.

    python results/task_change_study/mechanism.py parts_v5_zen3.json parts_A.json

Each JSON is ``results/interference_study/interference_parts.py --merges "ties d0.5" --json``
over one design's six zoos. Per design and seed it takes TIES d0.5's worst-kept expert (smallest
``merged`` share) and prints what the other vectors cost it through each part alone (``alone``
minus ``+others in P``), then each design's mean over its seeds, and the paired (by seed)
difference A minus v5 of the attention's cost, with its Student t 95 % interval. Last (written
after the declared check was read, so a description, not a test): the same costs for the two
tasks both designs have, add and cipher, whichever expert is worst kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.stats import paired_t

MERGE = "ties d0.5"
PARTS = ("attention", "mlp", "embeddings", "head", "norms")


def costs(result: dict) -> tuple[str, dict[str, float]]:
    """(the worst-kept expert's task, what the other vectors cost it through each part)."""
    rows = result["merges"][MERGE]
    task = min(rows, key=lambda t: rows[t]["merged"])
    rec = rows[task]
    return task, {
        p: rec["alone"] - rec[f"+others in {p}"] for p in PARTS if f"+others in {p}" in rec
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("v5", type=Path)
    parser.add_argument("candidate", type=Path)
    args = parser.parse_args()
    designs = {"v5": args.v5, "A": args.candidate}
    per = {}
    print(
        "| design | seed | worst-kept (TIES d0.5) | alone | merged | cost through "
        + " / ".join(PARTS)
        + " |"
    )
    print("|---|---|---|---|---|---|")
    for name, path in designs.items():
        per[name] = {}
        for result in json.loads(path.read_text()):
            task, cost = costs(result)
            rec = result["merges"][MERGE][task]
            per[name][result["seed"]] = cost
            print(f"| {name} | {result['seed']} | {task} | {rec['alone']:.2f} | {rec['merged']:.2f} | "
                  + " / ".join(f"{cost.get(p, float('nan')):.2f}" for p in PARTS) + " |")  # fmt: skip
    print()
    for name, by_seed in per.items():
        means = {p: statistics.mean(c[p] for c in by_seed.values() if p in c) for p in PARTS}
        print(f"{name}: mean cost to the worst-kept expert over {len(by_seed)} seeds: "
              + ", ".join(f"{p} {v:+.3f}" for p, v in means.items()))  # fmt: skip
    seeds = sorted(set(per["v5"]) & set(per["A"]))
    if len(seeds) >= 2:
        diffs = [per["A"][s]["attention"] - per["v5"][s]["attention"] for s in seeds]
        mean, half = paired_t(diffs)
        print(f"attention's cost, A minus v5 (seeds {seeds}): {mean:+.3f} [{mean - half:+.3f}, "
              f"{mean + half:+.3f}], lower on {sum(d < 0 for d in diffs)} of {len(diffs)}")  # fmt: skip
    print("\nnot declared: each shared task's costs, mean over the seeds (A minus v5, paired)")
    loaded = {name: json.loads(path.read_text()) for name, path in designs.items()}
    for task in ("add", "cipher"):
        for part in ("attention", "mlp", "embeddings"):
            by = {
                name: {r["seed"]: r["merges"][MERGE][task] for r in rs}
                for name, rs in loaded.items()
            }
            cost = {name: {s: rec["alone"] - rec[f"+others in {part}"] for s, rec in d.items()}
                    for name, d in by.items()}  # fmt: skip
            both = sorted(set(cost["v5"]) & set(cost["A"]))
            diffs = [cost["A"][s] - cost["v5"][s] for s in both]
            mean, half = paired_t(diffs)
            print(f"{task}, through the {part}: v5 {statistics.mean(cost['v5'].values()):+.3f}, "
                  f"A {statistics.mean(cost['A'].values()):+.3f}; A minus v5 {mean:+.3f} "
                  f"[{mean - half:+.3f}, {mean + half:+.3f}]")  # fmt: skip
        merged = {name: statistics.mean(r["merges"][MERGE][task]["merged"] for r in rs)
                  for name, rs in loaded.items()}  # fmt: skip
        print(f"{task}: TIES d0.5 keeps, mean: v5 {merged['v5']:.3f}, A {merged['A']:.3f}")


if __name__ == "__main__":
    main()
