"""Compare the plain-merge cells `make figures` wrote (figures.md, zoo seeds 1 and 2) with the
cells mergekit + plain transformers print for the same zoos (regime_check_seed{1,2}.txt).

    python results/zoo_v6/check_outside_figures.py

Prints each row of the figures' "fine-tune regime, plain merges" table beside regime_check's,
and how many rows are equal to the printed three decimals.
"""

from __future__ import annotations

import runpy
from pathlib import Path

HERE = Path(__file__).resolve().parent
TASKS = ["add", "atbash", "cipher"]
# regime_check's table, read by the parser the earlier studies committed (results/ is not a
# package: run its file)
outside_table = runpy.run_path(str(HERE.parent / "converged_base_budget" / "check_outside.py"))[
    "table"
]
# regime_check names the experts "expert:<task>"; figures.md names them by task alone
ROWS = ("base", "add", "atbash", "cipher", "ties d0.5", "task arith 0.5", "task arith 1.0",
        "linear uniform")  # fmt: skip


def figures_rows(text: str, seed: int) -> dict[str, list[str]]:
    """The plain-merge table of one zoo seed in figures.md, by row name."""
    head = f"**zoo seed {seed}: fine-tune regime, plain merges, TEST exact match**"
    block = text.split(head, 1)[1].split("\n\n", 2)[1]
    out = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells and cells[0] in ROWS:
            out[cells[0]] = cells[1:]
    return out


def check_rows(text: str) -> dict[str, list[str]]:
    """regime_check's score table, by the figures' row names, its cells as printed (3 decimals)."""
    return {
        name.removeprefix("expert:"): [f"{x:.3f}" for x in cells]
        for name, cells in outside_table(text, TASKS).items()
    }


def main() -> None:
    figures = (HERE / "figures_heldout" / "figures.md").read_text()
    total = equal = 0
    for seed in (1, 2):
        mine = figures_rows(figures, seed)
        theirs = check_rows((HERE / f"regime_check_seed{seed}.txt").read_text())
        for row in ROWS:
            same = mine.get(row) == theirs.get(row)
            total, equal = total + 1, equal + same
            print(f"seed {seed} {row:15} figures {mine.get(row)} outside {theirs.get(row)}"
                  f" {'equal' if same else 'DIFFERENT'}")  # fmt: skip
    print(f"{equal} of {total} rows equal")


if __name__ == "__main__":
    main()
