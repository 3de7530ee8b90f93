"""Gather main-job runs (``experiments.run ... run_dir=DIR``) into one JSON and print the margins.

    python results/zoo_v5/collect_main.py OUT.json RUN_DIR ...

Each RUN_DIR's name ends in ``_z<zoo seed>_s<search seed>`` (or is ``z<zoo seed>__<search seed>``,
as ``make figures`` names its main-job runs) and holds the run's ``summary.json``; a folder without
one (a run still going, or killed) is skipped and named, and two folders of one (zoo seed, search
seed) are refused (a run counted twice would skew every count and mean). Per zoo seed it prints
the front's test-split hypervolume against the references (single models + plain merges) and
against the references + the plain TIES lattice merges: mean [min, max] of the margins over the
search seeds, and how many runs clear +20 % over the references; for runs that recorded it, also
against the grid picked on search (its points non-dominated on SEARCH, scored on TEST), and
against a perfect model (the headroom, and the share of it the front took).
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path


def read(dirs: list[Path]) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {}
    seen: dict[tuple[int, int], Path] = {}
    for d in dirs:
        m = re.search(r"_z(\d+)_s(\d+)$", d.name) or re.fullmatch(r"z(\d+)__(\d+)", d.name)
        if m is None:
            raise SystemExit(
                f"{d}: the folder name must end in _z<zoo seed>_s<search seed> (or be "
                "z<zoo seed>__<search seed>)"
            )
        summary = d / "summary.json"
        if not summary.is_file():
            print(f"skipped {d}: no summary.json")
            continue
        key = (int(m.group(1)), int(m.group(2)))
        if key in seen:
            raise SystemExit(
                f"{d}: zoo seed {key[0]}, search seed {key[1]} is also {seen[key]}: pass one "
                "folder a run"
            )
        seen[key] = d
        s = json.loads(summary.read_text())
        refs = "single models + plain merges"
        runs.setdefault(m.group(1), []).append(
            {
                "seed": int(m.group(2)),
                "hv": s["hypervolume_search"],
                "hvt": s["hypervolume_test"],
                "rs": s["reference_hypervolume_search"][refs],
                "rt": s["reference_hypervolume_test"],
                "gs": s["grid_hypervolume_search"],
                "gt": s["grid_hypervolume_test"],
                # the grid's points non-dominated on SEARCH, scored on TEST (runs since session 28)
                "gft": s.get("grid_front_hypervolume_test"),
                # a perfect model's hypervolume (runs since session 43)
                "ceil": s.get("hypervolume_ceiling"),
                "wall": s["wall_s"],
            }
        )
    for rows in runs.values():
        rows.sort(key=lambda r: r["seed"])
    return runs


def margins(rows: list[dict[str, float]], front: str, ref: str) -> list[float]:
    return [100.0 * (r[front] / r[ref] - 1.0) for r in rows]


def span(values: list[float]) -> str:
    return f"{statistics.mean(values):+.1f} % [{min(values):+.1f}, {max(values):+.1f}]"


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    out, dirs = Path(argv[0]), [Path(a) for a in argv[1:]]
    runs = read(dirs)
    for zoo, rows in sorted(runs.items(), key=lambda item: int(item[0])):
        test = margins(rows, "hvt", "rt")
        # a run exactly at +20 % computes as 19.999999999999996: count it as the target's
        clears = sum(m >= 20.0 - 1e-9 for m in test)
        print(
            f"zoo {zoo}: {len(rows)} runs, test HV {statistics.mean(r['hvt'] for r in rows):.4f} vs "
            f"references {rows[0]['rt']:.4f}: {span(test)}, "
            f"{clears} of {len(rows)} runs >= +20 %; "
            f"search {span(margins(rows, 'hv', 'rs'))}"
        )
        grid_test = margins(rows, "hvt", "gt")
        print(
            f"        vs references + TIES grid (search {rows[0]['gs']:.4f} / test "
            f"{rows[0]['gt']:.4f}): search {span(margins(rows, 'hv', 'gs'))}, test "
            f"{span(grid_test)}, above the grid on test on {sum(m > 0 for m in grid_test)} of "
            f"{len(rows)}; wall {min(r['wall'] for r in rows):.0f}-"
            f"{max(r['wall'] for r in rows):.0f} s (search)"
        )
        if all(r["gft"] is not None for r in rows):
            picked = margins(rows, "hvt", "gft")
            print(
                f"        vs the grid picked on search (test {rows[0]['gft']:.4f}): "
                f"{span(picked)}, above it on {sum(m > 0 for m in picked)} of {len(rows)}"
            )
        if all(r["ceil"] is not None for r in rows):
            shares = [(r["hvt"] - r["rt"]) / (r["ceil"] - r["rt"]) for r in rows]
            print(
                f"        a perfect model {rows[0]['ceil']:.4f}: headroom "
                f"{100 * (rows[0]['ceil'] / rows[0]['rt'] - 1):+.1f} %, the front took "
                f"{statistics.mean(shares):.2f} [{min(shares):.2f}, {max(shares):.2f}] of it"
            )
    out.write_text(
        json.dumps(
            {
                "what": "main job (PPO, TIES lattice space, budget 200), 1 thread per run, two "
                "at a time",
                "commands": [
                    "OMP_NUM_THREADS=1 python -m experiments.run logger=none pool.seed=Z "
                    "seed=S run_dir=DIR"
                ],
                "references": "single models + plain merges; grid: references + the 28 plain "
                "TIES lattice merges",
                "runs": runs,
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
