"""Two arms of the per-part weight study, paired by zoo and search seed (README.md here).

    python results/per_part_weights/pair.py A.json B.json

A and B are ``collect.py`` outputs. Per zoo seed: the mean test hypervolume of each arm, the
mean paired difference A - B (in % of the references + grid test hypervolume), on how many
seeds A is higher, and the declared verdict (A beats B: mean higher and higher on >= 4 of 5).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise SystemExit(__doc__)
    a, b = (json.loads(Path(p).read_text()) for p in argv)
    names = [Path(p).stem for p in argv]
    wins = 0
    for zoo in sorted(set(a["zoos"]) & set(b["zoos"])):
        ra = {r["seed"]: r for r in a["zoos"][zoo]["runs"]}
        rb = {r["seed"]: r for r in b["zoos"][zoo]["runs"]}
        seeds = sorted(set(ra) & set(rb))
        diff = [100.0 * (ra[s]["hvt"] - rb[s]["hvt"]) / ra[s]["gt"] for s in seeds]
        higher = sum(d > 0 for d in diff)
        beats = statistics.mean(diff) > 0 and higher >= 4
        wins += beats
        print(f"zoo {zoo}: test HV {names[0]} {statistics.mean(ra[s]['hvt'] for s in seeds):.4f}"
              f" vs {names[1]} {statistics.mean(rb[s]['hvt'] for s in seeds):.4f}: "
              f"{statistics.mean(diff):+.1f} % of the grid [{min(diff):+.1f}, {max(diff):+.1f}], "
              f"higher on {higher} of {len(seeds)} -> {'beats' if beats else 'does not beat'}")  # fmt: skip
    print(f"{names[0]} beats {names[1]} on {wins} zoo seeds")


if __name__ == "__main__":
    main(sys.argv[1:])
