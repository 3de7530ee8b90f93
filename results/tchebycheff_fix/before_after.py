"""The main job on zoo v6 before and after the Tchebycheff fix, run by run (session 44).

    python results/tchebycheff_fix/before_after.py

Before: the committed runs (zoo 0: ``results/zoo_v6/main_job_z0.json``; zoos 1 and 2: ``make
figures``' 10 search seeds, ``results/zoo_v6/figures_heldout10/figures.json``; zoos 3-5:
``results/hv_ceiling/main_job_z345.json``). After: the same commands on the fixed code
(``main_job_z0_after.json``, ``figures_main/figures.json``; zoos 3-5, session 45:
``main_job_z345_after.json``). Prints,
per zoo, the test margin over the references and over the grid picked on search, the +20 %
count, how many runs reproduced bit for bit, and a paired signed-rank test of the test
hypervolumes (after against before, same search seed).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent


def figures_runs(path: Path) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    runs = json.loads(path.read_text())["sections"]["main"]["result"]["runs"]
    return {(r["zoo_seed"], r["seed"]): (r["hypervolume_search"], r["hypervolume_test"],
            r["reference_hypervolume_test"], r["grid_front_hypervolume_test"]) for r in runs}  # fmt: skip


def collected(path: Path) -> dict[tuple[int, int], tuple[float, float, float, float]]:
    runs = json.loads(path.read_text())["runs"]
    return {(int(z), r["seed"]): (r["hv"], r["hvt"], r["rt"], r["gft"])
            for z, rows in runs.items() for r in rows}  # fmt: skip


def main() -> None:
    before = {**collected(RESULTS / "zoo_v6" / "main_job_z0.json"),
              **figures_runs(RESULTS / "zoo_v6" / "figures_heldout10" / "figures.json"),
              **collected(RESULTS / "hv_ceiling" / "main_job_z345.json")}  # fmt: skip
    after = {**collected(HERE / "main_job_z0_after.json"),
             **figures_runs(HERE / "figures_main" / "figures.json"),
             **collected(HERE / "main_job_z345_after.json")}  # fmt: skip
    print("| zoo | runs | over the references, before → after | at +20 % | over the grid picked "
          "on search | bit for bit | after − before, test HV (paired p) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for zoo in sorted({z for z, _ in after}):
        keys = sorted(k for k in after if k[0] == zoo)
        b = np.array([before[k] for k in keys])
        a = np.array([after[k] for k in keys])
        margin = lambda x: 100 * (x[:, 1] / x[:, 2] - 1)  # noqa: E731
        picked = lambda x: 100 * (x[:, 1] / x[:, 3] - 1)  # noqa: E731
        same = int(np.sum(np.all(a[:, :2] == b[:, :2], axis=1)))
        diff = a[:, 1] - b[:, 1]
        p = stats.wilcoxon(diff).pvalue if np.any(diff != 0) and len(keys) > 5 else float("nan")
        print(f"| {zoo} | {len(keys)} | {margin(b).mean():+.1f} % → {margin(a).mean():+.1f} % "
              f"[{margin(a).min():+.1f}, {margin(a).max():+.1f}] | {np.sum(margin(b) >= 20 - 1e-9)} → "
              f"{np.sum(margin(a) >= 20 - 1e-9)} of {len(keys)} | {picked(b).mean():+.1f} % → "
              f"{picked(a).mean():+.1f} % | {same} of {len(keys)} | {diff.mean():+.4f} "
              f"({'too few runs for a test' if np.isnan(p) else f'p {p:.2g}'}) |")  # fmt: skip


if __name__ == "__main__":
    main()
