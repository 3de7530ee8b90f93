"""Do mergekit + plain transformers (``shared/tools/regime_check.py``) print the builder's cells?

    python results/zoo_v5_zen3/check_outside.py DIR [--seeds 0 1 2 3 4 5]

DIR holds ``build_zoo_seed<S>.txt`` (``python -m experiments.build_zoo --seed S``) and
``regime_check_seed<S>.txt`` (``regime_check.py`` on that zoo). Every row of regime_check's table
(base, the experts, the four fixed-weight merges) is compared, to the printed three decimals,
with the builder's "fine-tune regime" table. Prints one line per seed and the count of equal rows.
The two parsers are the ones the earlier studies committed (loaded from their files).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent
TASKS = ["add", "reverse", "cipher"]


def load_script(path: Path):
    """A results script loaded from its file (the studies' scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    builder = load_script(RESULTS / "zoo_v5_intel" / "compare_machines.py")
    outside = load_script(RESULTS / "converged_base_budget" / "check_outside.py")
    equal = total = 0
    for s in args.seeds:
        mine = builder.parse(args.dir / f"build_zoo_seed{s}.txt")["table"]
        theirs = outside.table((args.dir / f"regime_check_seed{s}.txt").read_text(), TASKS)
        if not theirs:
            raise SystemExit(f"{args.dir}/regime_check_seed{s}.txt: no table rows")
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
