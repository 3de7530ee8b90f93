"""Table an agent comparison (``compare_agents --merge`` output) against the plain TIES grid.

    python results/zoo_v5/collect_agents.py FILE.json ... [--out OUT.json]
    python results/zoo_v5/collect_agents.py --compact RESULTS.json OUT.json   # also ablate_ppo's

Each FILE is either a comparison, ``compare_agents --merge DIR/cmp_*/ --out OUT``'s
``results.json`` (any zoo seeds), or a main job, ``collect_main.py``'s output, which holds the
references + plain TIES lattice grid's hypervolume on each split for its zoo seeds (the grid does
not depend on the search seed); every compared zoo seed needs one. Per zoo seed it prints one
markdown row per agent, best search mean first: the search and test hypervolume, mean [95 % bootstrap CI] of the search seeds (as compare_agents
computes them), the two-sided Mann-Whitney p against the best baseline, the test margin over
the references + grid and on how many runs the agent's test hypervolume is above it, and the
agents' rank on search across the zoo seeds. OUT.json (optional) keeps the rows, runs without
curves and fronts.

``--compact`` writes a ``compare_agents --merge`` (or ``ablate_ppo --merge``) results.json
without its curves and fronts (each run's ``curve``, ``front``, ``front_test``; each compared
agent's or variant's mean ``curve``), the form of the committed ``agents_ties_b200_*.json`` and
``ablate_ppo_b200_*.json``: the protocol, the commit, the runs and the comparisons, every
figure the tables use (2.2 MB -> 0.4 MB for 210 comparison runs).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DROPPED_RUN_KEYS = ("curve", "front", "front_test")


def grid(main_job: Path, out: dict[int, tuple[float, float]]) -> None:
    """Add zoo seed -> (search, test) hypervolume of the references + the plain TIES grid."""
    runs = json.loads(main_job.read_text())["runs"]
    for zoo, rows in runs.items():
        pairs = {(round(r["gs"], 12), round(r["gt"], 12)) for r in rows}
        if len(pairs) != 1:
            raise SystemExit(f"{main_job}: zoo {zoo}'s runs disagree on the grid: {pairs}")
        out[int(zoo)] = (rows[0]["gs"], rows[0]["gt"])


def table(files: list[Path]) -> dict[str, object]:
    comparisons, all_runs, grids = [], [], {}
    for f in files:
        data = json.loads(f.read_text())
        if "comparisons" in data:
            comparisons += data["comparisons"]
            all_runs += data["runs"]
        else:
            grid(f, grids)
    rows, ranks = [], {}
    for comp in sorted(comparisons, key=lambda c: c["zoo_seed"]):
        zoo = comp["zoo_seed"]
        if zoo not in grids:
            raise SystemExit(f"zoo seed {zoo}: no main-job file among {[str(f) for f in files]}")
        gs, gt = grids[zoo]
        runs = [r for r in all_runs if r["zoo_seed"] == zoo]
        order = sorted(comp["agents"], key=lambda a: -comp["agents"][a]["search"]["mean"])
        print(f"\nzoo seed {zoo}: best baseline {comp['best_baseline']}; references + grid "
              f"search {gs:.4f} / test {gt:.4f}")  # fmt: skip
        print("| agent | n | search HV | test HV | p vs best | test vs grid | above grid |")
        print("|---|---|---|---|---|---|---|")
        for rank, agent in enumerate(order, 1):
            a = comp["agents"][agent]
            s, t = a["search"], a["test"]
            mine = [r["hv_test"] for r in runs if r["agent"] == agent]
            above = sum(v > gt for v in mine)
            p = a.get("vs_best")
            p_text = "(best)" if p is None else f"{p['p_mannwhitney']:.2g}"
            margin = 100 * (statistics.mean(mine) / gt - 1)
            print(f"| {agent} | {s['n']} | {s['mean']:.4f} [{s['low']:.4f}, {s['high']:.4f}] | "
                  f"{t['mean']:.4f} [{t['low']:.4f}, {t['high']:.4f}] | {p_text} | "
                  f"{margin:+.1f} % | {above} of {len(mine)} |")  # fmt: skip
            ranks.setdefault(agent, []).append(rank)
            rows.append({"zoo_seed": zoo, "agent": agent, "rank": rank, "search": s, "test": t,
                         "p_vs_best": None if p is None else p["p_mannwhitney"],
                         "test_vs_grid_pct": margin, "above_grid": above, "n": len(mine)})  # fmt: skip
    print("\nrank on search by zoo seed (1 = best):")
    for agent, r in sorted(ranks.items(), key=lambda kv: statistics.mean(kv[1])):
        print(f"  {agent}: {' / '.join(map(str, r))} (mean {statistics.mean(r):.1f})")
    return {"rows": rows, "ranks": ranks, "grid": grids, "runs": _without_fronts(all_runs)}


def compact(data: dict[str, object]) -> dict[str, object]:
    """Return a merged comparison without its curves and fronts: its what / commands (where a
    committed file has them), protocol, commit, runs and comparisons; merged_from and missing,
    the run folders it was merged from, are dropped."""
    if "comparisons" not in data or "runs" not in data:
        raise SystemExit(
            "--compact: not a compare_agents --merge results.json (no comparisons/runs)"
        )
    out = {k: data[k] for k in ("what", "commands", "protocol", "commit") if k in data}
    out["runs"] = _without_fronts(data["runs"])
    out["comparisons"] = [_without_curves(c) for c in data["comparisons"]]
    return out


def _without_fronts(runs: list[dict]) -> list[dict]:
    """The runs without their hypervolume curve and fronts (``DROPPED_RUN_KEYS``)."""
    return [{k: v for k, v in r.items() if k not in DROPPED_RUN_KEYS} for r in runs]


def _without_curves(comparison: dict) -> dict:
    """Drop the mean curve of each compared agent (compare_agents) or variant (ablate_ppo)."""
    out = dict(comparison)
    for key in ("agents", "variants"):
        if isinstance(out.get(key), dict):
            out[key] = {name: {k: v for k, v in row.items() if k != "curve"}
                        for name, row in out[key].items()}  # fmt: skip
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--compact"]:
        if len(argv) != 3:
            raise SystemExit(__doc__)
        _write(Path(argv[2]), json.dumps(compact(json.loads(Path(argv[1]).read_text()))))
        return 0
    target = None
    if "--out" in argv:
        i = argv.index("--out")
        target, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2 :]
    if not argv:
        raise SystemExit(__doc__)
    out = table([Path(a) for a in argv])
    if target is not None:
        _write(target, json.dumps(out, indent=1))
    return 0


def _write(target: Path, text: str) -> None:
    """Write ``text`` and a newline to ``target`` through a temporary file: a failed write
    leaves the old file or none, never a torn one."""
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text + "\n")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
