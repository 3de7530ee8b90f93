"""Summary of interference_parts.py's JSON: per zoo and merge, what the other experts' vectors
cost each expert's gain through each part, and which part costs the worst-kept expert most.

    python results/interference_study/summarize.py RESULTS.json [RESULTS.json ...] [--names A B]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PARTS = ("embeddings", "head", "attention", "mlp", "norms")  # those a pool has, in this order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--names", nargs="+")
    args = parser.parse_args()
    names = args.names or [p.stem for p in args.results]
    for name, path in zip(names, args.results, strict=True):
        runs = json.loads(path.read_text())
        for row in runs[0]["merges"]:
            keys = runs[0]["merges"][row][next(iter(runs[0]["merges"][row]))]
            parts = [p for p in PARTS if f"+others in {p}" in keys]
            print(f"## {name}: {row}\n")
            print(
                "cost of the other experts' vectors through one part (alone - alone with the "
                "others in that part), per expert add / reverse / cipher; the worst-kept "
                "expert in bold\n"
            )
            print(
                "| zoo seed | alone | merged | " + " | ".join(parts) + " | worst-kept expert: "
                "part costing most |"
            )
            print("|---|---|---|" + "---|" * len(parts) + "---|")
            tally: dict[str, int] = {}
            for run in runs:
                by_task = run["merges"][row]
                tasks = list(by_task)
                worst = min(tasks, key=lambda t: by_task[t]["merged"])

                def cell(key, by_task=by_task, tasks=tasks, worst=worst):
                    vals = [
                        by_task[t][key]
                        if key in ("alone", "merged")
                        else by_task[t]["alone"] - by_task[t][f"+others in {key}"]
                        for t in tasks
                    ]
                    return " / ".join(
                        f"**{v:.2f}**" if t == worst else f"{v:.2f}"
                        for t, v in zip(tasks, vals, strict=True)
                    )

                costs = {
                    p: by_task[worst]["alone"] - by_task[worst][f"+others in {p}"] for p in parts
                }
                top = max(costs, key=costs.__getitem__)
                tally[top] = tally.get(top, 0) + 1
                cells = " | ".join(cell(p) for p in parts)
                print(
                    f"| {run['seed']} | {cell('alone')} | {cell('merged')} | {cells} | "
                    f"{worst}: {top} ({costs[top]:+.2f}) |"
                )
            print(
                "\nthe part costing the worst-kept expert most, over the zoos: "
                + ", ".join(f"{p} {n}" for p, n in sorted(tally.items(), key=lambda x: -x[1]))
                + "\n"
            )
            print(
                "the merge's worst share over the experts, and the same with the other experts'"
                " vectors kept out of one part (merged, P alone)\n"
            )
            print("| zoo seed | merged | " + " | ".join(parts) + " |")
            print("|---|---|" + "---|" * len(parts))
            for run in runs:
                by_task = run["merges"][row]
                worst = {p: min(v[f"merged, {p} alone"] for v in by_task.values()) for p in parts}
                merged = min(v["merged"] for v in by_task.values())
                print(
                    f"| {run['seed']} | {merged:.2f} | "
                    + " | ".join(f"{worst[p]:.2f}" for p in parts)
                    + " |"
                )
            print()


if __name__ == "__main__":
    main()
