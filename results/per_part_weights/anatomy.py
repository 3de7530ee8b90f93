"""What the runs' archives hold (README.md here): per arm, the mean over its runs of the archive
entries, those with a layer path, those with per-part weights, the budget each phase spent and
the wall time.

    python results/per_part_weights/anatomy.py 'DIR/ppo_both_parts_z*_s*' '/tmp/s23/main/run_z?_s10[0-4]'

Each argument is a glob of ``experiments.run`` folders (quote it).
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path


def per_part(merge: dict | None) -> bool:
    """Whether a recipe's merge (as the archive stores it) gives some expert per-part weights."""
    return any(
        isinstance(m["parameters"].get("weight"), list) for m in (merge or {"models": []})["models"]
    )


def anatomy(run: Path) -> dict[str, float]:
    """One run's archive counts, phase spend and wall time."""
    out = {"entries": 0.0, "layer path": 0.0, "per-part": 0.0}
    for line in (run / "archive.jsonl").read_text().splitlines():
        recipe = json.loads(line)["recipe"]
        out["entries"] += 1
        out["layer path"] += bool(recipe.get("path"))
        out["per-part"] += per_part(recipe.get("merge"))
    summary = json.loads((run / "summary.json").read_text())
    out.update({f"spent {k}": float(v) for k, v in summary.get("phases", {}).items()})
    out["wall s"] = float(summary["wall_s"])
    return out


def main(patterns: list[str]) -> None:
    if not patterns:
        raise SystemExit(__doc__)
    for pattern in patterns:
        runs = [Path(p) for p in sorted(glob.glob(pattern)) if (Path(p) / "summary.json").exists()]
        if not runs:
            raise SystemExit(f"{pattern}: no finished run (a folder with summary.json)")
        rows = [anatomy(r) for r in runs]
        keys = [k for k in rows[0] if all(k in r for r in rows)]
        means = ", ".join(f"{k} {statistics.mean(r[k] for r in rows):.1f}" for k in keys)
        print(f"{pattern}: {len(rows)} runs; mean {means}")


if __name__ == "__main__":
    main(sys.argv[1:])
