"""Candidate A's builder cells against mergekit + plain transformers (``regime_check.py``).

    python results/task_change_study/check_outside.py [--seeds 0 1 2 3 4 5]

For each seed, every model row ``regime_check_A_seed<S>.txt`` prints (base, experts, the four
plain merges) must equal the builder's row in ``build_A_seed<S>.txt`` to three decimals; prints
the rows that differ and the count (the parsers are ``results/zoo_v5_intel/compare_machines.py``'s
and ``results/converged_base_budget/check_outside.py``'s).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
TASKS = ("add", "atbash", "cipher")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    builder = _load(RESULTS / "zoo_v5_intel" / "compare_machines.py")
    outside = _load(RESULTS / "converged_base_budget" / "check_outside.py")
    equal = total = 0
    for s in args.seeds:
        mine = builder.parse(HERE / f"build_A_seed{s}.txt")["table"]
        theirs = outside.table((HERE / f"regime_check_A_seed{s}.txt").read_text(), TASKS)
        if not theirs:
            raise SystemExit(f"regime_check_A_seed{s}.txt: no table rows")
        rows = []
        for name, cells in theirs.items():
            ours = mine.get(name.removeprefix("expert:"))
            same = ours is not None and all(f"{a:.3f}" == f"{b:.3f}" for a, b in zip(cells, ours))
            rows.append(same)
            if not same:
                print(f"seed {s}: {name} differs: regime_check {cells}, builder {ours}")
        equal, total = equal + sum(rows), total + len(rows)
        print(f"seed {s}: {sum(rows)} of {len(rows)} rows equal")
    print(f"{equal} of {total} rows equal")


if __name__ == "__main__":
    main()
