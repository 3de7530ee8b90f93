"""The main job on candidate A's zoos beside zoo v5's on the same host, paired by zoo and search seed.

    python results/task_change_study/main_job.py results/task_change_study/main_job_A.json

Reads ``collect_main.py``'s JSON for A and ``results/zoo_v5_zen3/main_job_zen3_6runs.json`` (v5,
zoo seeds 0-5, search seeds 100-105). For every (zoo seed, search seed) both hold, it prints the
front's and the references' test hypervolume and the margins over the references and over the grid
picked on search; then per design the runs that clear +20 % over the references, the mean
margins, and the paired differences A minus v5 (Student t 95 % over the runs).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.stats import paired_t

V5 = Path(__file__).resolve().parent.parent / "zoo_v5_zen3" / "main_job_zen3_6runs.json"


def runs(path: Path) -> dict[tuple[int, int], dict]:
    data = json.loads(path.read_text())["runs"]
    return {(int(z), r["seed"]): r for z, rs in data.items() for r in rs}


def margins(r: dict) -> tuple[float, float]:
    """(over the references, over the grid picked on search), test split, in %."""
    return 100 * (r["hvt"] / r["rt"] - 1), 100 * (r["hvt"] / r["gft"] - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", type=Path)
    parser.add_argument("--v5", type=Path, default=V5)
    args = parser.parse_args()
    a, v5 = runs(args.candidate), runs(args.v5)
    keys = sorted(set(a) & set(v5))
    print("| zoo seed | search seed | A: front / references test HV | A over refs | A over grid picked "
          "| v5: front / references | v5 over refs | v5 over grid picked |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for k in keys:
        ma, mv = margins(a[k]), margins(v5[k])
        print(f"| {k[0]} | {k[1]} | {a[k]['hvt']:.4f} / {a[k]['rt']:.4f} | {ma[0]:+.1f} % | {ma[1]:+.1f} % "
              f"| {v5[k]['hvt']:.4f} / {v5[k]['rt']:.4f} | {mv[0]:+.1f} % | {mv[1]:+.1f} % |")  # fmt: skip
    print()
    for name, rs in (("A", a), ("v5", v5)):
        m = [margins(rs[k]) for k in keys]
        print(f"{name}: {len(keys)} runs; >= +20 % over the references on {sum(x[0] >= 20 for x in m)}; "
              f"mean over the references {statistics.mean(x[0] for x in m):+.1f} %, over the grid "
              f"picked on search {statistics.mean(x[1] for x in m):+.2f} % (above it on "
              f"{sum(x[1] > 0 for x in m)}); references' test HV mean "
              f"{statistics.mean(rs[k]['rt'] for k in keys):.4f}")  # fmt: skip
    if len(keys) >= 2:
        for i, label in enumerate(("over the references", "over the grid picked on search")):
            diffs = [margins(a[k])[i] - margins(v5[k])[i] for k in keys]
            mean, half = paired_t(diffs)
            print(
                f"margin {label}, A minus v5: {mean:+.2f} points [{mean - half:+.2f}, {mean + half:+.2f}]"
            )


if __name__ == "__main__":
    main()
