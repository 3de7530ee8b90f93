"""The SmolLM2 arm's figures (README.md here): per run of ``run_smollm2.sh``, the front's
hypervolume on SEARCH and TEST, its TEST margin over the references and over the references +
the plain TIES grid, and what its front holds; then the declared verdicts.

    python results/per_part_weights/smollm2_runs.py DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def per_part(entry: dict) -> bool:
    merge = entry["recipe"].get("merge") or {"models": []}
    return any(isinstance(m["parameters"].get("weight"), list) for m in merge["models"])


def main(argv: list[str]) -> None:
    if len(argv) != 1:
        raise SystemExit(__doc__)
    test: dict[str, dict[str, float]] = {"parts": {}, "expert": {}}
    above = {"parts": [], "expert": []}
    for run in sorted(Path(argv[0]).glob("ppo_smollm2_*_s*")):
        if not (run / "summary.json").exists():
            continue
        arm, seed = run.name.split("_")[2], run.name.split("_s")[-1]
        s = json.loads((run / "summary.json").read_text())
        front = json.loads((run / "front_test.json").read_text())
        hv, ref, grid = (
            s["hypervolume_test"],
            s["reference_hypervolume_test"],
            s["grid_hypervolume_test"],
        )
        test[arm][seed] = hv
        above[arm].append(hv > grid)
        print(f"{arm} seed {seed}: front HV search {s['hypervolume_search']:.4f} / test {hv:.4f}; "
              f"references test {ref:.4f} ({100 * (hv / ref - 1):+.1f} %); references + grid "
              f"search {s['grid_hypervolume_search']:.4f} / test {grid:.4f} "
              f"({100 * (hv / grid - 1):+.1f} %); front {len(front)} points, "
              f"{sum(per_part(e) for e in front)} per-part, "
              f"{sum(bool(e['recipe'].get('path')) for e in front)} with a layer path; "
              f"search wall {s['wall_s']:.0f} s")  # fmt: skip
    seeds = sorted(set(test["parts"]) & set(test["expert"]))
    lift = bool(seeds) and all(test["parts"][k] > test["expert"][k] for k in seeds)
    print(f"per-part higher than per-expert on {sum(test['parts'][k] > test['expert'][k] for k in seeds)}"
          f" of {len(seeds)} seeds -> {'lifts' if lift else 'does not lift'} (declared: both)")  # fmt: skip
    beats = bool(above["parts"]) and all(above["parts"])
    print(f"per-part above the references + grid on {sum(above['parts'])} of {len(above['parts'])} "
          f"runs -> {'beats' if beats else 'does not beat'} the grid (declared: both)")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
