"""A variant's regime against zoo v5's own experts on the same base files, seed by seed.

    python -m experiments.regime_variants --seed S --set expert_replay=0.9 \\
        "expert_steps=[1800,1800,1800]" --out DIR                      # S = 0 ... 5
    python results/replay_dose_study/table.py DIR/results.jsonl > table.md
    python results/replay_dose_study/table.py DIR/results.jsonl --variant LR > table_lr.md

Each results.jsonl line with the variant's settings (RR by default; LR: ``--set
expert_lr=3e-4``) is paired with the cached zoo v5 of its seed, judged here by
``assess_regime`` as ``build_zoo`` judges it (the λ chosen on the search split included).
Both sides share the base file, data, seeds and scoring; only the experts' recipe differs. Prints
the per-seed table, then the paired difference of the best judged merge's worst share (mean,
95 % t interval over the seeds), how many seeds hold, and each expert's own-task spread.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from experiments.build_zoo import zoo_config
from experiments.stats import paired_t
from merge_env.pools.regime import Assessment, assess_regime
from merge_env.pools.zoo import Zoo, build_zoo
from merge_env.search.recipe import BASE

# the study's variants: their regime_variants settings
VARIANTS = {
    "RR": {"expert_replay": 0.9, "expert_steps": [1800, 1800, 1800]},
    "LR": {"expert_lr": 3e-4},
}


def variant_runs(results: Path, name: str) -> dict[int, dict]:
    """``regime_variants``' records in ``results`` (a results.jsonl) of variant ``name``, by seed."""
    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    return {r["seed"]: r for r in lines if r["settings"] == VARIANTS[name] and not r["lora"]}


def judged_v5(seed: int) -> tuple[Zoo, Assessment]:
    """The cached zoo v5 of ``seed`` and its regime, judged as ``build_zoo`` judges it."""
    zoo = build_zoo(zoo_config("default", seed), progress=False)
    return zoo, assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)


def v5_side(seed: int) -> dict:
    """The cached zoo v5 of ``seed``, judged: scores, gains, kept shares, best judged, verdict."""
    zoo, found = judged_v5(seed)
    r = found.regime
    return {"scores": found.scores, "gains": r.gains, "kept": r.kept, "best": list(r.best_judged),
            "holds": r.holds, "tasks": [t.name for t in zoo.tasks]}  # fmt: skip


def row(seed: int, label: str, side: dict, tasks: list[str]) -> str:
    own = " / ".join(f"{side['scores'][t][t]:.3f}" for t in tasks)
    gains = " / ".join(f"{side['gains'][t]:+.3f}" for t in tasks)
    ties = " / ".join(f"{side['kept']['ties d0.5'][t]:.2f}" for t in tasks)
    name, worst = side["best"]
    verdict = "**holds**" if side["holds"] else "does not hold"
    return f"| {seed} | {label} | {own} | {gains} | {ties} | {name}: {worst:.2f} | {verdict} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="RR")
    args = parser.parse_args()
    name = args.variant
    runs = variant_runs(args.results, name)
    print("| seed | experts | own task add / reverse / cipher | gains | TIES d0.5 keeps | "
          "best judged merge: worst share | regime |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    diffs, held, own_task = [], {"v5": 0, name: 0}, {"v5": [], name: []}
    for seed in sorted(runs):
        rr, v5 = runs[seed], v5_side(seed)
        tasks = v5["tasks"]
        if rr["scores"]["base"] != v5["scores"]["base"]:
            raise SystemExit(f"seed {seed}: the variant's base scores differ from the zoo's")
        for label, side in (("v5 (the zoo's)", v5), (f"{name}, same base file", rr)):
            print(row(seed, label, side, tasks))
            key = "v5" if side is v5 else name
            held[key] += bool(side["holds"])
            own_task[key].append([side["scores"][t][t] for t in tasks])
        diffs.append(rr["best"][1] - v5["best"][1])
        print(f"| {seed} | {name} − v5 | | | | {diffs[-1]:+.2f} | |")
    n = len(diffs)
    print()
    if n >= 2:
        mean, half = paired_t(diffs)
        print(f"- Paired difference of the worst share, {name} − v5, over {n} seeds: mean "
              f"{mean:+.3f}, 95 % t interval [{mean - half:+.3f}, {mean + half:+.3f}]; "
              f"{name} higher on {sum(d > 0 for d in diffs)} of {n}.")  # fmt: skip
    print(f"- Seeds where the regime holds: v5 {held['v5']} of {n}, {name} {held[name]} of {n}.")
    for key, table in own_task.items():
        spread = [max(c) - min(c) for c in zip(*table)] if table else []
        print(f"- {key}: own-task spread over the seeds (add / reverse / cipher): "
              + " / ".join(f"{s:.3f}" for s in spread))  # fmt: skip


if __name__ == "__main__":
    main()
