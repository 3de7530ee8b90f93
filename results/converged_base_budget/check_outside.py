"""Do mergekit + plain transformers (``shared/tools/regime_check.py``) print the builder's cells?

    python results/converged_base_budget/check_outside.py records.jsonl regime_check_*.txt

Each regime_check file names its variant and seed in its first line ("ZOO = CB2 seed 3's zoo").
Every row of its table (base, the experts, the four fixed-weight merges) is compared, to the
printed three decimals, with the same model's TEST exact match in the variant's record, as
``cb.py measure`` judged it. Prints one line per file and the count of equal rows.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def table(text: str, tasks: list[str]) -> dict[str, list[float]]:
    """regime_check's rows: model -> exact match per task, in ``tasks`` order."""
    out = {}
    number = r"\s+(-?[0-9.]+)" * len(tasks)
    for line in text.splitlines():
        m = re.match(
            r"^(base|expert:\w+|ties d0\.5|task arith [0-9.]+|linear uniform)" + number + r"\s*$",
            line,
        )
        if m:
            out[m.group(1)] = [float(x) for x in m.groups()[1:]]
    return out


def main() -> None:
    records = Path(sys.argv[1])
    by = {(r["zoo"], r["seed"]): r for r in map(json.loads, records.read_text().splitlines())}
    equal = total = 0
    for path in map(Path, sys.argv[2:]):
        text = path.read_text()
        m = re.search(r"ZOO = (\w+) seed (\d+)", text.splitlines()[0])
        record = by[(m.group(1), int(m.group(2)))]
        tasks = record["tasks"]
        rows = table(text, tasks)
        same = 0
        for name, got in rows.items():
            # the builder names an expert's row by its task, every other row as this tool does
            want = [round(record["scores"][name.removeprefix("expert:")][t], 3) for t in tasks]
            same += all(abs(g - w) < 5e-4 for g, w in zip(got, want, strict=True))
        equal, total = equal + same, total + len(rows)
        print(f"{path.name}: {same} of {len(rows)} rows equal the builder's cells; "
              f"{text.strip().splitlines()[-2][:60]}")  # fmt: skip
    print(f"all: {equal} of {total} rows equal")


if __name__ == "__main__":
    main()
