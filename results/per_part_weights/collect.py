"""The per-part weight study's figures (README.md here), judged by the rule declared there.

    python results/per_part_weights/collect.py OUT.json RUN_DIR ... [--main MAIN.json]
        [--builds results/zoo_v5_intel]

Each RUN_DIR is one ``experiments.run`` of ``run_all.sh`` (its name ends ``_z<zoo>_s<seed>``).
Per zoo seed it prints the test-hypervolume margin of the per-part front over the references +
the plain TIES grid (mean [min, max] over the search seeds, runs above), the main job's (PPO,
both levels) margin on the same search seeds from ``MAIN.json`` beside it, and the worst share
of the experts' gains kept on TEST by the front's merge with the best worst share on SEARCH,
against the builder's best judged plain merge (``--builds``: the ``build_zoo_seed<Z>.txt``
console outputs, whose TEST table gives the base and the experts on TEST).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "zoo_v5"), str(HERE.parent / "zoo_v5_intel")]
from collect_main import margins, read, span  # noqa: E402
from compare_machines import parse  # noqa: E402

TASKS = ("add", "reverse", "cipher")


def shares(scores: dict[str, float], base: dict[str, float], experts: dict[str, dict]) -> list:
    """Each expert's share of its own-task gain that ``scores`` keeps."""
    return [(scores[t] - base[t]) / (experts[t][t] - base[t]) for t in TASKS]


def worst_share(run: Path, build: dict) -> dict:
    """The front's merge with the best worst share on SEARCH, and its worst share on TEST."""
    anchors = {}
    for line in (run / "archive.jsonl").read_text().splitlines():
        entry = json.loads(line)
        if entry["recipe"].get("shell"):
            anchors[entry["recipe"]["shell"]] = entry["scores"]
    table = build["table"]
    base_test = dict(zip(TASKS, table["base"]))
    experts_test = {t: dict(zip(TASKS, table[t])) for t in TASKS}
    merges = [e for e in json.loads((run / "front_test.json").read_text()) if e["recipe"]["merge"]]
    best = max(merges, key=lambda e: min(shares(e["search"], anchors["base"], anchors)))
    weights = [m["parameters"]["weight"] for m in best["recipe"]["merge"]["models"]]
    return {
        "recipe": best["recipe_hash"],
        "per_part": any(isinstance(w, list) for w in weights),
        "path": best["recipe"]["path"] is not None,
        "search": min(shares(best["search"], anchors["base"], anchors)),
        "test_shares": shares(best["test"], base_test, experts_test),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--main", type=Path,
                    default=HERE.parent / "zoo_v5_intel" / "main_job_ties_zoo_v5_intel.json")  # fmt: skip
    ap.add_argument("--builds", type=Path, default=HERE.parent / "zoo_v5_intel")
    args = ap.parse_args()
    runs = read(args.runs)
    ppo = json.loads(args.main.read_text())["runs"]
    by_run = {re.search(r"_z(\d+)_s(\d+)$", p.name).groups(): p for p in args.runs}
    agent = re.sub(r"_z\d+_s\d+$", "", args.runs[0].name)  # e.g. moead_parts, moead_both_expert
    held, out = 0, {}
    for zoo, rows in sorted(runs.items()):
        build = parse(args.builds / f"build_zoo_seed{zoo}.txt")
        grid = margins(rows, "hvt", "gt")
        above = sum(m > 0 for m in grid)
        adds = statistics.mean(grid) > 0 and above >= 4
        held += adds
        seeds = {r["seed"] for r in rows}
        main_rows = [r for r in ppo.get(zoo, []) if r["seed"] in seeds]
        ws = [worst_share(by_run[(zoo, str(r["seed"]))], build) for r in rows]
        test_worst = [min(w["test_shares"]) for w in ws]
        print(f"zoo {zoo}: {agent} vs references + TIES grid (test {rows[0]['gt']:.4f}): "
              f"test {span(grid)}, above on {above} of {len(rows)} -> "
              f"{'adds' if adds else 'does not add'}; search {span(margins(rows, 'hv', 'gs'))}")  # fmt: skip
        if main_rows:
            main_grid = margins(main_rows, "hvt", "gt")
            print(f"        main job (PPO, both levels), the same {len(main_rows)} search seeds: "
                  f"test {span(main_grid)}, above on {sum(m > 0 for m in main_grid)}")  # fmt: skip
        print(f"        best worst share on SEARCH -> TEST worst share "
              f"{statistics.mean(test_worst):.2f} [{min(test_worst):.2f}, {max(test_worst):.2f}] "
              f"({sum(w >= 0.5 for w in test_worst)} of {len(ws)} >= 0.50; per-part recipe in "
              f"{sum(w['per_part'] for w in ws)}, a layer path in {sum(w['path'] for w in ws)}); "
              f"builder's best plain merge "
              f"{build['worst']:.2f} ({build['best']})")  # fmt: skip
        out[zoo] = {"runs": rows, "main_job": main_rows, "worst_share": ws, "adds": adds,
                    "builder_worst": build["worst"], "builder_best": build["best"]}  # fmt: skip
    verdict = "holds" if held >= 4 else "does not hold"
    print(f"{agent} adds to the plain grid on {held} of {len(runs)} zoo seeds: "
          f"the claim {verdict} (declared: at least 4 of 6)")  # fmt: skip
    args.out.write_text(json.dumps({
        "what": f"{agent} (<agent>_parts: parameter level, env.weight_parts=[self_attn,mlp]; "
                "<agent>_<level>_<parts|expert>: that level, those weights), TIES lattice, "
                "budget 200, one thread per run, two at a time",
        "command": "[AGENT=.. LEVEL=.. PARTS=..] bash results/per_part_weights/run_all.sh DIR",
        "zoos": out, "adds_on": held, "verdict": verdict,
    }, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
