"""Where fronts lose between SEARCH and TEST: per zoo seed and arm, the front's size, the archive's,
and each front point's loss (its SEARCH minus TEST exact match, mean over the tasks), by kind of
point (single model, plain lattice merge, per-part merge, layer path).

    python results/per_part_weights/carryover.py DIR_PPO DIR_MOEAD

DIR_PPO holds arm 5's run folders (``ppo_both_parts_z<Z>_s<S>``), DIR_MOEAD arm 4's
(``moead_both_parts_z<Z>_s<S>``), each with its ``front_test.json`` and ``summary.json``.
"""

from __future__ import annotations

import json
import statistics as st
import sys
from pathlib import Path

from anatomy import per_part  # this folder's script (on the path when run as documented)

KINDS = ("single", "plain", "perpart", "path")


def kind(point: dict) -> str:
    recipe = point["recipe"]
    merge = recipe.get("merge")
    if recipe.get("path"):
        return "path"
    if merge is None:
        return "single"
    return "perpart" if per_part(merge) else "plain"


def arm(folder: Path, prefix: str, zoo: int) -> dict:
    fronts, archives, losses = [], [], {k: [] for k in KINDS}
    per_run = []
    for run in sorted(folder.glob(f"{prefix}_z{zoo}_s*")):
        if run.suffix == ".log" or not (run / "front_test.json").is_file():
            continue
        front = json.loads((run / "front_test.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        fronts.append(len(front))
        archives.append(summary["archive_size"])
        gaps = []
        for p in front:
            gap = st.mean(p["search"][t] - p["test"][t] for t in p["search"])
            losses[kind(p)].append(gap)
            gaps.append(gap)
        per_run.append(st.mean(gaps))
    return {"runs": len(per_run), "front": st.mean(fronts), "archive": st.mean(archives),
            "loss": st.mean(per_run), "losses": losses}  # fmt: skip


def main(ppo_dir: str, moead_dir: str) -> None:
    print("| zoo | arm | runs | front points | archive | loss per point | by kind: points, loss |")
    print("|---|---|---|---|---|---|---|")
    diffs = []
    for zoo in range(6):
        rows = {"PPO (arm 5)": arm(Path(ppo_dir), "ppo_both_parts", zoo),
                "MOEA/D (arm 4)": arm(Path(moead_dir), "moead_both_parts", zoo)}  # fmt: skip
        for name, r in rows.items():
            kinds = ", ".join(
                f"{k} {len(v)} {st.mean(v):+.4f}" for k, v in r["losses"].items() if v
            )
            print(f"| {zoo} | {name} | {r['runs']} | {r['front']:.1f} | {r['archive']:.1f} | "
                  f"{r['loss']:+.4f} | {kinds} |")  # fmt: skip
        diffs.append(rows["PPO (arm 5)"]["loss"] - rows["MOEA/D (arm 4)"]["loss"])
    print()
    print("PPO minus MOEA/D, loss per front point, zoo seeds 0-5: "
          + " / ".join(f"{d:+.4f}" for d in diffs)
          + f" (PPO loses more on {sum(d > 0 for d in diffs)} of 6)")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:3])
