"""Every agent of the held-out comparison against both grids (session 28; no new runs).

The comparison's runs (`make figures`, session 27, Intel host, zoo seeds 1 and 2, search seeds
100-109, budget 200) hold each run's test hypervolume; the main job's runs on the same zoos hold
the references + plain TIES grid's test hypervolume with every grid point and picked on search
(`results/figures/regrid.py`). Both use the same problem, so the same normalisation.

    python results/figures/regrid/agents_heldout.py results/figures/heldout
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main(out: str) -> None:
    figures = json.loads((Path(out) / "figures.json").read_text())
    grids = {}
    for r in figures["sections"]["main"]["result"]["runs"]:
        grids.setdefault(r["zoo_seed"], set()).add(
            (r["grid_hypervolume_test"], r["grid_front_hypervolume_test"])
        )
    runs = json.loads((Path(out) / "compare" / "results.json").read_text())["runs"]
    print(
        "| zoo seed | agent | runs | test vs references + grid, every point: mean [min, max] "
        "(above) | vs the grid picked on search (above) |"
    )
    print("|---|---|---|---|---|")
    for zoo in sorted(grids):
        ((every, picked),) = grids[zoo]  # one grid a zoo: the same on every main-job run
        agents = sorted({r["agent"] for r in runs if r["zoo_seed"] == zoo})
        rows = []
        for agent in agents:
            hv = [r["hv_test"] for r in runs if r["zoo_seed"] == zoo and r["agent"] == agent]
            cells = []
            for grid in (every, picked):
                m = [100 * (h / grid - 1) for h in hv]
                cells.append(
                    f"{statistics.mean(m):+.1f} % [{min(m):+.1f}, {max(m):+.1f}] "
                    f"({sum(x > 0 for x in m)} of {len(m)})"
                )
            rows.append(
                (statistics.mean(hv), f"| {zoo} | {agent} | {len(hv)} | {cells[0]} | {cells[1]} |")
            )
        for _, row in sorted(rows, reverse=True):
            print(row)


if __name__ == "__main__":
    main(sys.argv[1])
