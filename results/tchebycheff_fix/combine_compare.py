"""The agent comparison on zoo v6 after the Tchebycheff fix (session 44).

    python results/tchebycheff_fix/combine_compare.py OLD_PARTS NEW_PARTS OUT

OLD_PARTS: session 43's ``make figures`` compare part stores
(``results/zoo_v6/figures_heldout10/compare/parts``, git-ignored: kept on the machine that ran
them); NEW_PARTS: the fixed code's PPO and MO-CMA-ES runs (``make figures --only compare --agents
ppo mo_cmaes --jobs 2``' ``compare/parts``). The agents the fix cannot touch (NSGA-II, MOEA/D,
TPE, random, CMA-ES: none calls the Tchebycheff scalarisation) keep their committed runs; PPO's
and MO-CMA-ES's are replaced. Copies of the old stores without those two agents go to
``OUT/old_parts``, and ``compare_agents --merge`` analyses both sets into ``OUT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from experiments import compare_agents  # noqa: E402

REPLACED = ("ppo", "mo_cmaes")


def main(old: Path, new: Path, out: Path) -> None:
    kept = []
    for part in sorted(p for p in old.iterdir() if (p / "results.json").is_file()):
        store = json.loads((part / "results.json").read_text())
        store["runs"] = [r for r in store["runs"] if r["agent"] not in REPLACED]
        store.pop("comparisons", None)
        (out / "old_parts" / part.name).mkdir(parents=True, exist_ok=True)
        (out / "old_parts" / part.name / "results.json").write_text(json.dumps(store))
        kept.append(out / "old_parts" / part.name)
    fresh = sorted(p for p in new.iterdir() if (p / "results.json").is_file())
    compare_agents.main(["--merge", *map(str, kept + fresh), "--out", str(out)])


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:4]))
