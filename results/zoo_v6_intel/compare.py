"""Zoo v6 on this session's Intel Xeon against the Zen 4 of session 41, training seeds 0-2.

    python results/zoo_v6_intel/compare.py

This host: ``build_seed<S>.txt`` (``build_zoo`` outputs) and ``regime_check_seed<S>.txt``
(``../shared/tools/regime_check.py``: mergekit merges, plain transformers scores). The Zen 4:
``results/zoo_v6/seeds.py``'s rows (its own sources: build outputs and ``make figures``' zoo
section) and, for every cell of the base and the experts, ``results/hv_ceiling/zoo_v6.jsonl``
(the same weights scored again in session 43). Prints, per seed and host, each expert's own-task
TEST exact match and gain, the best judged plain merge's worst share with its interval and the
verdict; this host's own-task spread across the seeds; the largest difference between the hosts'
cells per seed; and whether the outside check printed the builder's cells, row by row.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
TASKS = ("add", "atbash", "cipher")
SEEDS = (0, 1, 2)
seeds = SimpleNamespace(**runpy.run_path(str(RESULTS / "zoo_v6" / "seeds.py")))
OUTSIDE_ROW = re.compile(r"^(\S.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$")


def zen4_rows() -> dict[int, dict]:
    """The Zen 4's rows of seeds 0-2, as ``results/zoo_v6/seeds.py`` reads them."""
    figures = json.loads((RESULTS / "zoo_v6" / "figures_heldout" / "figures.json").read_text())
    text = (RESULTS / "zoo_v6" / "figures_heldout" / "figures.md").read_text()
    rows = {z["zoo_seed"]: seeds.from_figures(z, text)
            for z in figures["sections"]["zoo"]["result"]["zoos"]}  # fmt: skip
    rows[0] = seeds.from_build(RESULTS / "zoo_v6" / "build_seed0.txt")
    return {s: rows[s] for s in SEEDS}


def zen4_cells() -> dict[int, dict[str, tuple[float, ...]]]:
    """The Zen 4's TEST exact match of the base and each expert on every task, by seed."""
    out = {}
    for line in (RESULTS / "hv_ceiling" / "zoo_v6.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["seed"] in SEEDS:
            out[row["seed"]] = {
                name.removeprefix("model:"): tuple(v) for name, v in row["singles_test"].items()
            }
    return out


def outside_rows(path: Path) -> dict[str, tuple[float, ...]]:
    """The rows regime_check.py printed (model, then one exact match a task)."""
    rows = {}
    for line in path.read_text().replace("\r", "\n").splitlines():
        m = OUTSIDE_ROW.match(line.strip())
        if m and "%|" not in line:
            rows[m.group(1)] = tuple(float(x) for x in m.group(2, 3, 4))
    return rows


def main() -> None:
    here = {s: seeds.from_build(HERE / f"build_seed{s}.txt") for s in SEEDS}
    tables = {s: seeds.machines.parse(HERE / f"build_seed{s}.txt")["table"] for s in SEEDS}
    zen4 = zen4_rows()
    print("| seed | host | " + " | ".join(f"{t} (gain)" for t in TASKS)
          + " | best judged merge | worst share [95 %] | regime |")  # fmt: skip
    print("|---" * (len(TASKS) + 5) + "|")
    for s in SEEDS:
        for host, r in (("Zen 4 (session 41)", zen4[s]), ("Intel (this session)", here[s])):
            cells = [f"{r['own'][t]:.3f} ({r['gains'][t]:+.3f})" for t in TASKS]
            print(f"| {s} | {host} | " + " | ".join(cells)
                  + f" | {r['best']} | {r['worst']:.2f} {r['interval']} | "
                  f"{'holds' if r['holds'] else '**does not hold**'} |")  # fmt: skip
    print()
    spread = {t: max(here[s]["own"][t] for s in SEEDS) - min(here[s]["own"][t] for s in SEEDS)
              for t in TASKS}  # fmt: skip
    gains = min(g for s in SEEDS for g in here[s]["gains"].values())
    print(f"- This host, seeds {list(SEEDS)}: own-task spread "
          + ", ".join(f"{t} {v:.3f}" for t, v in spread.items())
          + f" (target <= 0.10); smallest gain {gains:+.3f} (target >= 0.30); the regime holds "
          f"on {sum(here[s]['holds'] for s in SEEDS)} of {len(SEEDS)}.")  # fmt: skip
    cells = zen4_cells()
    for s in SEEDS:
        gap = {m: max(abs(x - y) for x, y in zip(tables[s][m], cells[s][m]))
               for m in ("base", *TASKS)}  # fmt: skip
        worst = max(gap, key=gap.__getitem__)
        print(
            f"- Seed {s}: the largest |Intel - Zen 4| over the three tasks, per model: "
            + ", ".join(f"{m} {v:.3f}" for m, v in gap.items())
            + f" (largest: {worst})."
        )
    for s in SEEDS:
        path = HERE / f"regime_check_seed{s}.txt"
        if not path.is_file():
            print(f"- Seed {s}: no outside check.")
            continue
        outside = outside_rows(path)
        named = {("expert:" + k if k in TASKS else k): v for k, v in tables[s].items()}
        same = [k for k, v in outside.items() if named.get(k) == v]
        differ = [k for k in outside if k not in same]
        print(
            f"- Seed {s}: regime_check.py printed {len(outside)} rows, {len(same)} equal to "
            f"the builder's cells" + (f"; differing: {differ}" if differ else "") + "."
        )


if __name__ == "__main__":
    main()
