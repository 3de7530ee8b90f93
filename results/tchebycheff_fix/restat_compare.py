"""The agent comparison of session 44 (zoo v6, zoos 1 and 2, 10 search seeds, the fixed reward)
with the statistics session 45 added: each agent against the best baseline on the test split as
well as the search split, and paired by search seed (runs of one seed share its proposals and
anchors, so a signed-rank test is the design's).

    python results/tchebycheff_fix/restat_compare.py [RESULTS_JSON]

RESULTS_JSON: ``compare_agents --merge``'s store written by ``combine_compare.py`` (kept on the
machine that ran it); given, the runs' final hypervolumes are written to ``compare/runs.json``
first. Without it the script reads ``compare/runs.json``. Prints one table per zoo.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments import stats  # noqa: E402

RUNS = Path(__file__).resolve().parent / "compare" / "runs.json"
KEYS = ("agent", "zoo_seed", "level", "seed", "hv", "hv_test")


def main(store: Path | None) -> None:
    if store is not None:
        runs = [{k: r[k] for k in KEYS} for r in json.loads(store.read_text())["runs"]]
        RUNS.write_text(json.dumps({"from": str(store), "runs": runs}, indent=0) + "\n")
    runs = json.loads(RUNS.read_text())["runs"]
    for zoo in sorted({r["zoo_seed"] for r in runs}):
        by: dict[str, dict[int, dict]] = {}
        for r in runs:
            if r["zoo_seed"] == zoo:
                by.setdefault(r["agent"], {})[r["seed"]] = r
        mean = {a: sum(r["hv"] for r in rs.values()) / len(rs) for a, rs in by.items()}
        best = max((a for a in by if not a.startswith("ppo")), key=mean.__getitem__)
        print(f"\n## zoo {zoo}: best baseline on search {best}\n")
        print(
            "| agent | search HV | test HV | vs best, search: MWU; perm. | vs best, test: MWU; "
            "perm. | paired signed-rank p, search (higher / n) | paired, test |"
        )
        print("|---|---|---|---|---|---|---|")
        for agent in sorted(by, key=lambda a: -mean[a]):
            rs, bs = by[agent], by[best]
            cells = [stats.format_ci(stats.summarise([r[k] for r in rs.values()]))
                     for k in ("hv", "hv_test")]  # fmt: skip
            if agent == best:
                cells += ["(best)"] * 4
            else:
                for key in ("hv", "hv_test"):
                    a, b = [r[key] for r in rs.values()], [r[key] for r in bs.values()]
                    cells.append(stats.format_p(vars(stats.rank_test(a, b))))
                for key in ("hv", "hv_test"):
                    t = stats.signed_rank({s: r[key] for s, r in rs.items()},
                                          {s: r[key] for s, r in bs.items()})  # fmt: skip
                    cells.append(f"{t.p_signed_rank:.3g} ({t.a_higher} / {len(t.seeds)})")
            print(f"| {agent} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
