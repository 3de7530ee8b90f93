"""A variant of zoo v5's base (CB: 3,000 steps; CB2: also every task's rare symbols as scarce
as cipher's; CB3: add's and reverse's between the two) against zoo v5, seed by seed, with the
continuation control on both bases.

    python -m experiments.build_zoo --seed S --core-only --no-progress --set base_steps=3000
    python results/converged_base_budget/cb.py measure records.jsonl --seeds 0 1 2 3 4 5
    python results/converged_base_budget/cb.py report records.jsonl > table.md
    python -m experiments.build_zoo --seed S --core-only --no-progress --set base_steps=3000 \\
        "base_rare_mass=[0.002,0.002,0.002]"
    python results/converged_base_budget/cb.py measure records.jsonl --variant CB2
    python results/converged_base_budget/cb.py report records.jsonl --variant CB2 > table_cb2.md

``measure`` loads each seed's cached zoo v5 and the variant's zoo (built as above), judges both regimes as
``build_zoo`` does (the λ chosen on the search split included), and trains each base 900 more
steps on its own pretraining mixture alone at the experts' rate (``continue_base``), scoring it
on the TEST split. One record per zoo and seed is appended to RECORDS as it finishes; seeds
already there are skipped, so a stopped run resumes. ``report`` prints the per-seed table, the
base's rise under its continuation (the declared criterion: converged if no task rises by more
than 0.05), each worst share counted from the base and from the continuation, the paired
differences variant − v5 with their 95 % t intervals, and the own-task spread over the seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer

from experiments.build_zoo import zoo_config
from experiments.stats import paired_t
from merge_env.pools.regime import assess_regime
from merge_env.pools.zoo import build_zoo, continue_base
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.recipe import BASE

# the variants' changes to zoo v5, as build_zoo's --set takes them (README: each declared
# before its runs)
VARIANTS = {
    "CB": ["base_steps=3000"],
    "CB2": ["base_steps=3000", "base_rare_mass=[0.002,0.002,0.002]"],
    "CB3": ["base_steps=3000", "base_rare_mass=[0.0045,0.0045,0.002]"],
}
CONVERGED_RISE = 0.05  # the declared criterion: no task rises by more under the continuation


def configs(seed: int, variant: str) -> dict:
    return {
        "v5": zoo_config("default", seed),
        variant: zoo_config("default", seed, VARIANTS[variant]),
    }


def measure_one(name: str, config) -> dict:
    """One zoo's record: its TEST scores, verdict, task vectors and its base's continuation."""
    zoo = build_zoo(config, progress=False)  # the cached zoo; builds it when absent
    found = assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)
    start = time.perf_counter()
    model = continue_base(zoo)
    seconds = time.perf_counter() - start
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device="cpu")
    cont = {t: s.exact_match for t, s in evaluator.score_tasks(model, zoo.tasks, "test").items()}
    r = found.regime
    return {
        "zoo": name, "seed": config.seed, "root": str(zoo.root),
        "tasks": [t.name for t in zoo.tasks],
        "scores": found.scores,
        "gains": r.gains, "kept": r.kept, "best": list(r.best_judged), "holds": r.holds,
        "verdict_interval": r.verdict_interval, "vectors_relative": found.vectors.relative,
        "vectors_cosine": {p: {f"{a}-{b}": c for (a, b), c in v.items()}
                           for p, v in found.vectors.cosine.items()},
        "continuation": cont, "continuation_steps": config.expert_steps[0],
        "continuation_seconds": round(seconds, 1),
    }  # fmt: skip


def measure(records: Path, seeds: list[int], variant: str) -> None:
    done = set()
    if records.exists():
        done = {(r["zoo"], r["seed"]) for r in map(json.loads, records.read_text().splitlines())}
    for seed in seeds:
        for name, config in configs(seed, variant).items():
            if (name, seed) in done:
                continue
            record = measure_one(name, config)
            with records.open("a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"{name} seed {seed}: worst share {record['best'][1]:.3f} "
                  f"({record['best'][0]}), continuation {record['continuation']}", flush=True)  # fmt: skip


def share(merged: float, start: float, expert: float) -> float:
    """The share of the way from ``start`` to the expert's own-task score that a merge covers."""
    return (merged - start) / (expert - start)


def worst_from(record: dict, start_key: str) -> float:
    """The best judged merge's worst share, counted from the base or from the continuation."""
    best = record["best"][0]
    starts = record["scores"]["base"] if start_key == "base" else record["continuation"]
    return min(share(record["scores"][best][t], starts[t], record["scores"][t][t])
               for t in record["tasks"])  # fmt: skip


def report(records: Path, variant: str) -> None:
    rows = [json.loads(x) for x in records.read_text().splitlines() if x.strip()]
    by = {(r["zoo"], r["seed"]): r for r in rows}
    seeds = sorted({s for (z, s) in by if ("v5", s) in by and (variant, s) in by})
    tasks = by[("v5", seeds[0])]["tasks"]
    slash = " / ".join
    print("| seed | zoo | base add / reverse / cipher | continuation's rise | experts' own task | "
          "gains | best judged merge: worst share [95 % interval] | from the continuation | "
          "regime |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    diffs: dict[str, list[float]] = {"base": [], "continuation": []}
    names = ("v5", variant)
    held, own, rises = {n: 0 for n in names}, {n: [] for n in names}, {n: [] for n in names}
    for seed in seeds:
        for name in names:
            r = by[(name, seed)]
            base, cont = r["scores"]["base"], r["continuation"]
            rise = [cont[t] - base[t] for t in tasks]
            mine = [r["scores"][t][t] for t in tasks]
            gains = [r["gains"][t] for t in tasks]
            rises[name].append(max(rise))
            low, high = r["verdict_interval"] or (float("nan"), float("nan"))
            held[name] += bool(r["holds"])
            own[name].append(mine)
            print(f"| {seed} | {name} | {slash(f'{base[t]:.3f}' for t in tasks)} | "
                  f"{slash(f'{x:+.3f}' for x in rise)} | "
                  f"{slash(f'{x:.3f}' for x in mine)} | {slash(f'{x:+.3f}' for x in gains)} | "
                  f"{r['best'][0]}: {r['best'][1]:.2f} [{low:.2f}, {high:.2f}] | "
                  f"{worst_from(r, 'continuation'):.2f} | "
                  f"{'**holds**' if r['holds'] else 'does not hold'} |")  # fmt: skip
        for key in diffs:
            cb, v5 = by[(variant, seed)], by[("v5", seed)]
            diffs[key].append(worst_from(cb, key) - worst_from(v5, key))
    n = len(seeds)
    print()
    for key, label in (("base", "from the base"), ("continuation", "from the continuation")):
        if n >= 2:
            mean, half = paired_t(diffs[key])
            print(f"- Worst share {label}, {variant} − v5 over {n} seeds: mean {mean:+.3f}, 95 % "
                  f"t interval [{mean - half:+.3f}, {mean + half:+.3f}]; {variant} higher on "
                  f"{sum(d > 0 for d in diffs[key])} of {n}.")  # fmt: skip
    print(f"- Seeds where the regime holds: v5 {held['v5']} of {n}, {variant} {held[variant]} "
          f"of {n}.")  # fmt: skip
    for name in names:
        converged = sum(x <= CONVERGED_RISE for x in rises[name])
        spread = [max(c) - min(c) for c in zip(*own[name], strict=True)]
        print(f"- {name}: the base converged by the declared criterion (no task rises by more "
              f"than {CONVERGED_RISE} under 900 more steps of its own mixture) on {converged} of "
              f"{n} seeds (largest rise per seed: {slash(f'{x:+.3f}' for x in rises[name])}); "
              f"own-task spread over the seeds {slash(f'{s:.3f}' for s in spread)}.")  # fmt: skip
    print()
    print("| seed | zoo | body: size add / reverse / cipher, cosines | embeddings: size, cosines |")
    print("|---|---|---|---|")
    for seed in seeds:
        for name in names:
            r = by[(name, seed)]
            cells = []
            for part in ("body", "embeddings"):
                size = slash(f"{x:.1%}" for x in r["vectors_relative"][part].values())
                cos = slash(f"{x:.2f}" for x in r["vectors_cosine"][part].values())
                cells.append(f"{size}, {cos}")
            print(f"| {seed} | {name} | {cells[0]} | {cells[1]} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["measure", "report"])
    parser.add_argument("records", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="CB")
    args = parser.parse_args()
    if args.command == "measure":
        measure(args.records, args.seeds, args.variant)
    else:
        report(args.records, args.variant)


if __name__ == "__main__":
    main()
