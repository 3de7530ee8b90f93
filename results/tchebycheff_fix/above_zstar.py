"""Count each main-job run's cached search-split scores that beat z* on their task.

    python results/tchebycheff_fix/above_zstar.py RUN_DIR [RUN_DIR ...]   (wrote above_zstar_before.txt)

A run folder is named ``z<zoo>__<seed>`` (``make figures``) or ``run_z<zoo>_s<seed>``. z* (the
best single model a task, search split) is read from ``results/hv_ceiling/zoo_v6.jsonl``. Scores
are counted per fidelity: the full search split (96 examples) and the cheap one (16).
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TASKS = ("add", "atbash", "cipher")


def zoo_of(name: str) -> int:
    return int(name[1:].split("__")[0]) if "__" in name else int(name.split("_")[1][1:])


def main(dirs: list[str]) -> None:
    rows = [json.loads(line) for line in (ROOT / "results/hv_ceiling/zoo_v6.jsonl").open()]
    zstar = {r["seed"]: dict(zip(TASKS, r["z_star"], strict=True)) for r in rows}
    for d in map(Path, dirs):
        z = zstar[zoo_of(d.name)]
        above = {"full": 0, "cheap": 0}
        total = 0
        with sqlite3.connect(d / "eval_cache.sqlite") as db:
            for key, em, n in db.execute("select key, exact_match, n from scores"):
                _, task, split, _ = key.split("::")
                if split != "search":
                    continue
                total += 1
                if em > z[task] + 1e-12:
                    above["full" if n == 96 else "cheap"] += 1
        print(d.name, zoo_of(d.name), total, above)


if __name__ == "__main__":
    main(sys.argv[1:])
