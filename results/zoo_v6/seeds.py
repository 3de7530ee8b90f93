"""Zoo v6 on the session-41 Zen 4 at 2 threads, training seeds 0-5: the issue's pool targets.

    python results/zoo_v6/seeds.py

Seeds 0, 3, 4, 5 come from ``build_seed<S>.txt`` (``build_zoo`` outputs, read with the parser the
earlier studies committed, ``results/zoo_v5_intel/compare_machines.parse``); seeds 1 and 2 from
``make figures``' zoo section (``figures_heldout/figures.json``, the worst share's interval from
its ``figures.md``), which built them here with the same code and thread count. Per seed: each
expert's own-task TEST exact match, its gain over the base, the best judged plain merge and its
worst share with the 95 % interval, the builder's verdict; then each task's own-task spread over
the seeds (issue 13: <= 0.10), the smallest gain (>= 0.30) and how many seeds hold the regime.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
TASKS = ("add", "atbash", "cipher")

# the regime table's parser the earlier studies committed (results/ is not a package: run its file)
machines = SimpleNamespace(
    **runpy.run_path(str(HERE.parent / "zoo_v5_intel" / "compare_machines.py"))
)


def from_build(path: Path) -> dict:
    """One seed's row from a build_zoo output."""
    found = machines.parse(path)
    low, high = found["interval"] or ("?", "?")
    return {
        "own": {t: found["table"][t][i] for i, t in enumerate(TASKS)},
        "gains": found["gains"],
        "best": found["best"],
        "worst": found["worst"],
        "interval": f"[{low}, {high}]",
        "holds": found["holds"],
        "source": path.name,
    }


def from_figures(zoo: dict, text: str) -> dict:
    """One seed's row from figures.json's zoo section; the worst share's bootstrap interval from
    the verdict figures.md prints for that seed (figures.json keeps each share's own interval)."""
    regime = zoo["regime"]
    best, worst = regime["best_judged"]
    section = text.split(f"### Zoo seed {zoo['zoo_seed']}", 1)[1].split("### ", 1)[0]
    found = re.search(r"worst share [\d.]+; 95% bootstrap interval (-?[\d.]+)-(-?[\d.]+)", section)
    return {
        "own": {t: zoo["scores"][f"expert:{t}"][t]["exact_match"] for t in TASKS},
        "gains": regime["gains"],
        "best": best,
        "worst": worst,
        "interval": f"[{found.group(1)}, {found.group(2)}]" if found else "",
        "holds": regime["holds"],
        "source": "figures_heldout/",
    }


def main() -> None:
    rows = {}
    figures = json.loads((HERE / "figures_heldout" / "figures.json").read_text())
    text = (HERE / "figures_heldout" / "figures.md").read_text()
    for zoo in figures["sections"]["zoo"]["result"]["zoos"]:
        rows[zoo["zoo_seed"]] = from_figures(zoo, text)
    for path in sorted(HERE.glob("build_seed*.txt")):
        rows[int(path.stem.removeprefix("build_seed"))] = from_build(path)
    print("| seed | " + " | ".join(f"{t} (gain)" for t in TASKS)
          + " | best judged merge | worst share | holds | from |")  # fmt: skip
    print("|---" * (len(TASKS) + 5) + "|")
    for seed in sorted(rows):
        r = rows[seed]
        cells = [f"{r['own'][t]:.3f} ({r['gains'][t]:+.3f})" for t in TASKS]
        print(f"| {seed} | " + " | ".join(cells)
              + f" | {r['best']} | {r['worst']:.2f} {r['interval']} | "
              f"{'yes' if r['holds'] else '**no**'} | {r['source']} |")  # fmt: skip
    spreads = {t: max(r["own"][t] for r in rows.values()) - min(r["own"][t] for r in rows.values())
               for t in TASKS}  # fmt: skip
    smallest = min(g for r in rows.values() for g in r["gains"].values())
    held = sum(r["holds"] for r in rows.values())
    print()
    print(f"seeds {sorted(rows)}: own-task spread "
          + ", ".join(f"{t} {s:.3f}" for t, s in spreads.items())
          + f" (target <= 0.10); smallest gain {smallest:+.3f} (target >= 0.30); "
          f"the regime holds on {held} of {len(rows)}")  # fmt: skip


if __name__ == "__main__":
    main()
