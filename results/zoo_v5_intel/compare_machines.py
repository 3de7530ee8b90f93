"""Zoo v5 built on two machines: each training seed's regime, side by side.

    python results/zoo_v5_intel/compare_machines.py DIR_A DIR_B [--seeds 0 1 2] [--names A B]

Each DIR holds ``build_zoo_seed<S>.txt``, the console output of ``python -m experiments.build_zoo
--seed S``. Per seed and machine it prints the TEST exact match of the base and of each expert on
its own task, the gains, the shares of every gain that TIES d0.5 and task arithmetic 0.5 keep,
the best judged merge's worst share with its 95 % interval, and the verdict; then, per machine,
the spread of each expert's own-task score across the seeds (issue 13's target: <= 0.10) and,
per seed, how far the second machine's scores lie from the first's.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

MODEL_ROW = re.compile(r"^│ (\S[^│]*?)\s*│\s*([\d.]+) │\s*([\d.]+) │\s*([\d.]+) │$")


def _text(path: Path) -> str:
    """The console output with progress bars dropped and wrapped lines joined."""
    lines = path.read_text(errors="replace").replace("\r", "\n").splitlines()
    return "\n".join(line for line in lines if "%|" not in line)


def parse(path: Path) -> dict:
    """The regime figures of one build_zoo output."""
    text = _text(path)
    start = text.find("fine-tune regime: plain merges of the experts, TEST")
    if start < 0:
        raise SystemExit(f"{path}: no 'fine-tune regime' table (built with --no-regime?)")
    table = {}
    for line in text[start:].splitlines():
        m = MODEL_ROW.match(line)
        if m:
            table[m.group(1)] = tuple(float(x) for x in m.group(2, 3, 4))
        elif table and line.startswith("└"):
            break
    flat = " ".join(text[start:].split())
    listed = re.search(r"on its task: ((?:\w+ [+-][\d.]+(?:, )?)+)", flat)
    gains = re.findall(r"(\w+) ([+-][\d.]+)", listed.group(1)) if listed else []
    best = re.search(r"best (.+?) \(worst share (-?[\d.]+)(?:; 95% bootstrap interval "
                     r"(-?[\d.]+)-(-?[\d.]+))?", flat)  # fmt: skip
    kept = {}
    for name in ("ties d0.5", "task arith 0.5"):
        m = re.search(re.escape(name) + r": (-?[\d.]+|-) (-?[\d.]+|-) (-?[\d.]+|-)", flat)
        kept[name] = tuple(m.groups()) if m else ("?", "?", "?")
    return {
        "table": table,
        "gains": {k: float(v) for k, v in gains},
        "best": best.group(1) if best else "none",
        "worst": float(best.group(2)) if best else float("nan"),
        "interval": (best.group(3), best.group(4)) if best and best.group(3) else None,
        "kept": kept,
        "holds": "regime holds" in flat,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs=2, type=Path)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--names", nargs=2, help="the machines' labels (default: the folders')")
    args = parser.parse_args()
    names = dict(zip(args.dirs, args.names or [d.name for d in args.dirs], strict=True))
    tasks = ("add", "reverse", "cipher")
    runs = {d: {s: parse(d / f"build_zoo_seed{s}.txt") for s in args.seeds} for d in args.dirs}
    print(
        "| seed | machine | base own task | expert own task | gains | TIES d0.5 keeps | "
        "task arith 0.5 keeps | best judged merge: worst share [95 %] | regime |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for s in args.seeds:
        for d in args.dirs:
            r = runs[d][s]
            base = [r["table"]["base"][i] for i in range(3)]
            own = [r["table"][t][i] for i, t in enumerate(tasks)]
            iv = f" [{r['interval'][0]}, {r['interval'][1]}]" if r["interval"] else ""
            print(
                f"| {s} | {names[d]} | " + " / ".join(f"{x:.3f}" for x in base)
                + " | " + " / ".join(f"{x:.3f}" for x in own)
                + " | " + " / ".join(f"{r['gains'][t]:+.3f}" for t in tasks)
                + " | " + " / ".join(r["kept"]["ties d0.5"])
                + " | " + " / ".join(r["kept"]["task arith 0.5"])
                + f" | {r['best']}: {r['worst']:.2f}{iv} | "
                + ("holds" if r["holds"] else "does not hold") + " |"
            )  # fmt: skip
    print()
    for d in args.dirs:
        spread = []
        for i, t in enumerate(tasks):
            own = [runs[d][s]["table"][t][i] for s in args.seeds]
            spread.append(f"{t} {max(own) - min(own):.3f}")
        holds = sum(runs[d][s]["holds"] for s in args.seeds)
        print(f"{names[d]}: regime holds on {holds} of {len(args.seeds)} seeds")
        print(f"{names[d]}: own-task spread across seeds {args.seeds}: " + ", ".join(spread))
    a, b = args.dirs
    for s in args.seeds:
        gap = {
            m: max(abs(x - y) for x, y in zip(runs[a][s]["table"][m], runs[b][s]["table"][m]))
            for m in ("base", *tasks)
        }
        print(f"seed {s}: largest |{names[b]} - {names[a]}| per model over the three tasks: "
              + ", ".join(f"{m} {v:.3f}" for m, v in gap.items()))  # fmt: skip


if __name__ == "__main__":
    main()
