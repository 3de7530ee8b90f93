"""The zoo's regime against the same base's experts trained again under other kernels.

    ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python -m experiments.regime_variants --seed S --out DIR        # S = 0 ... 5
    python results/drift_study/regime_fixed_base.py DIR/results.jsonl > regime_fixed_base.md

For every line of ``regime_variants``' results.jsonl with no settings changed (the zoo's own
recipe, trained again from the cached zoo's base file), the cached zoo of that seed is judged
here by ``assess_regime``, as ``build_zoo`` and ``figures`` judge it. Both sides share the base
file, data, seeds and scoring, so what differs is the experts' training arithmetic. Run this
script with the default kernels: scoring does not depend on the kernel path
(``../zoo_v5_intel/rescore_*.txt``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from merge_env.pools.regime import assess_regime
from merge_env.pools.zoo import ZooConfig, build_zoo
from merge_env.search.recipe import BASE

FIXED = ("ties d0.5", "task arith 0.5", "task arith 1.0", "linear uniform")


def _own(zoo) -> dict:
    found = assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)
    r = found.regime
    scores = {("base" if k == BASE else k): v for k, v in found.scores.items()}
    return {"scores": scores, "gains": r.gains, "kept": r.kept, "best": list(r.best_judged),
            "holds": r.holds}  # fmt: skip


def _shares(kept: dict, merge: str, tasks: list[str]) -> str:
    return " / ".join(f"{kept[merge][t]:.2f}" for t in tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if not r["settings"] and not r["lora"] and r["preset"] == "default"]
    print("| seed | experts trained with | own task add / reverse / cipher | gains | "
          "TIES d0.5 keeps | task arith 0.5 keeps | best judged merge: worst share | regime |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    moved: dict[str, list[float]] = {m: [] for m in FIXED}
    flips = 0
    for other in sorted(rows, key=lambda r: r["seed"]):
        zoo = build_zoo(
            dataclasses.replace(ZooConfig.preset("default"), seed=other["seed"]), progress=False
        )
        tasks = [t.name for t in zoo.tasks]
        own = _own(zoo)
        assert own["scores"]["base"] == other["scores"]["base"], "not the same base file"
        for label, r in (("AVX-512 (the zoo's)", own), ("AVX2, same base file", other)):
            experts = " / ".join(f"{r['scores'][t][t]:.3f}" for t in tasks)
            gains = " / ".join(f"+{r['gains'][t]:.3f}" for t in tasks)
            name, worst = r["best"]
            print(f"| {other['seed']} | {label} | {experts} | {gains} | "
                  f"{_shares(r['kept'], 'ties d0.5', tasks)} | "
                  f"{_shares(r['kept'], 'task arith 0.5', tasks)} | {name}: {worst:.2f} | "
                  f"{'holds' if r['holds'] else 'does not hold'} |")  # fmt: skip
        flips += own["holds"] != other["holds"]
        for m in FIXED:
            moved[m] += [abs(own["kept"][m][t] - other["kept"][m][t]) for t in tasks
                         if not math.isnan(own["kept"][m][t])]  # fmt: skip
        moved_best = other["best"][1] - own["best"][1]
        print(f"| {other['seed']} | difference | | | | | {moved_best:+.2f} | |")
    print()
    print(f"- {len(rows)} seeds; the verdict differs on {flips}.")
    print("- How far each fixed-weight merge's kept shares move, over (seed, expert):")
    for m, d in moved.items():
        d.sort()
        print(f"  - {m}: median {d[len(d) // 2]:.3f}, largest {d[-1]:.3f} ({len(d)} shares)")


if __name__ == "__main__":
    main()
