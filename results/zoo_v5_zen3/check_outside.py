"""Do mergekit + plain transformers (``shared/tools/regime_check.py``) print the builder's cells?

    python results/zoo_v5_zen3/check_outside.py DIR [--seeds 0 1 2 3 4 5] [--tasks add reverse cipher]
        [--build build_zoo_seed{}.txt] [--check regime_check_seed{}.txt]

DIR holds ``build_zoo_seed<S>.txt`` (``python -m experiments.build_zoo --seed S``) and
``regime_check_seed<S>.txt`` (``regime_check.py`` on that zoo), or the files ``--build`` and
``--check`` name (``{}``: the seed), for a zoo of the tasks ``--tasks``. Every row of regime_check's table
(base, the experts, the four fixed-weight merges) is compared, to the printed three decimals,
with the builder's "fine-tune regime" table. Prints one line per seed and the count of equal rows.
The two parsers are the ones the earlier studies committed (loaded from their files).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent
TASKS = ["add", "reverse", "cipher"]  # the default zoo's


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
    parser.add_argument("--tasks", nargs="+", default=TASKS, help="the zoo's tasks, in its order")
    parser.add_argument("--build", default="build_zoo_seed{}.txt", help="build_zoo's output")
    parser.add_argument("--check", default="regime_check_seed{}.txt", help="regime_check's output")
    args = parser.parse_args()
    builder = load_script(RESULTS / "zoo_v5_intel" / "compare_machines.py")
    outside = load_script(RESULTS / "converged_base_budget" / "check_outside.py")
    equal = total = 0
    for s in args.seeds:
        mine = builder.parse(args.dir / args.build.format(s))["table"]
        check = args.dir / args.check.format(s)
        theirs = outside.table(check.read_text(), args.tasks)
        if not theirs:
            raise SystemExit(f"{check}: no table rows")
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
