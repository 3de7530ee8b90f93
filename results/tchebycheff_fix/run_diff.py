"""Where two runs of the main job part: archive entries (recipe by index), front, recipes.

    python results/tchebycheff_fix/run_diff.py OLD_RUN_FOLDER NEW_RUN_FOLDER

Prints how many archive entries name another recipe, the first index where they part, the
sources there, whether ``front_test.json`` is the same bytes, and which written recipes differ.
"""

from __future__ import annotations

import filecmp
import json
import sys
from pathlib import Path


def archive(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "archive.jsonl").read_text().splitlines()]


def main(old: Path, new: Path) -> None:
    a, b = archive(old), archive(new)
    parted = [i for i, (x, y) in enumerate(zip(a, b)) if x["recipe_hash"] != y["recipe_hash"]]
    print(f"{old} -> {new}")
    print(f"  archive entries: {len(a)} -> {len(b)}; naming another recipe: {len(parted)}")
    if parted:
        i = parted[0]
        shown = parted if len(parted) <= 12 else f"{parted[:12]} ..."
        print(f"  first at index {i} (sources {a[i]['source']} -> {b[i]['source']}); {shown}")
    same_scores = all(
        x["scores"] == y["scores"] for x, y in zip(a, b) if x["recipe_hash"] == y["recipe_hash"]
    )
    print(f"  entries naming the same recipe have the same scores: {same_scores}")
    for name in ("front_test.json", "summary.json"):
        same = filecmp.cmp(old / name, new / name, shallow=False)
        print(f"  {name}: {'same bytes' if same else 'differs'}")
    old_r, new_r = ({q.name for q in (f / "recipes").iterdir()} for f in (old, new))
    both = sorted(old_r & new_r)
    changed = [r for r in both
               if not filecmp.cmp(old / "recipes" / r, new / "recipes" / r, shallow=False)]  # fmt: skip
    print(f"  recipe files: {len(old_r)} -> {len(new_r)}; differing: {changed or 'none'}"
          + (f"; only before: {sorted(old_r - new_r)}" if old_r - new_r else "")
          + (f"; only after: {sorted(new_r - old_r)}" if new_r - old_r else ""))  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
