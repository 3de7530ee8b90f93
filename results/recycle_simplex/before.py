"""Session 43's recycling runs (the weight lattice, one search start per zoo) rendered with
today's ``recycle_markdown``, which counts distinct merges and search-split ties from each run's
rows, beside this study's (``figures.json``): per zoo, how often the optimised merge beats each
baseline on TEST, and how many checkpoints it keeps.

    python results/recycle_simplex/before.py > results/recycle_simplex/before_after.md
"""

from __future__ import annotations

import json
from pathlib import Path

from experiments.figures import recycle_markdown

HERE = Path(__file__).resolve().parent
BEFORE = HERE.parent / "zoo_v6" / "figures_heldout10" / "figures.json"


def runs(path: Path) -> list[dict]:
    return json.loads(path.read_text())["sections"]["recycle"]["result"]["runs"]


def counts(rs: list[dict], zoo: int) -> str:
    rs = [r for r in rs if r["zoo_seed"] == zoo]
    test = [{k: v["test"]["macro"] for k, v in r["rows"].items()} for r in rs]
    beats = {k: sum(t["optimised"] > t[k] for t in test) for k in test[0] if k != "optimised"}
    active = sum(r["rows"]["optimised"]["active"] for r in rs) / len(rs)
    said = ", ".join(f"{k} {n}" for k, n in beats.items())
    return (
        f"zoo {zoo}: optimised above on TEST, of {len(rs)} runs: {said}; mean active {active:.1f}"
    )


def main() -> None:
    before, after = runs(BEFORE), runs(HERE / "figures.json")
    print("# Recycling before (session 43: lattice in sixths) and after (session 45: simplex)\n")
    for zoo in (1, 2):
        print(f"- before, {counts(before, zoo)}")
        print(f"- after, {counts(after, zoo)}")
    print("\n## Before, rendered with today's code\n")
    print("\n".join(recycle_markdown({"runs": before}, {})))


if __name__ == "__main__":
    main()
