"""The task-change study: candidate A (add, atbash, cipher) against zoo v5 on the same host.

    python results/task_change_study/table.py [--seeds 0 1 2 3 4 5] [--arith1t]

Reads this folder's ``build_A_seed<S>.txt`` (``python -m experiments.build_zoo --seed S
--core-only --set "tasks=['add','atbash','cipher']"``) and the same host's zoo v5 builds,
``results/zoo_v5_zen3/build_zoo_seed<S>.txt`` (seeds 6-11: this folder's
``build_v5_seed<S>.txt``), with ``results/zoo_v5_intel/compare_machines.py``'s parser. Prints per
seed and design: the base and each expert on its own task, the gains, the best judged merge with its worst share, 95 % interval and per-task shares, the trade-off check and
the verdict; then each design's count of seeds that hold, mean worst share and own-task spread;
the paired (by seed) differences A minus v5 of the worst share and of the shares of the two tasks
both designs have (add, cipher) under the best judged merge and under TIES d0.5 (Student t 95 %);
and the declared reading (README: a lead needs 6 of 6, every spread <= 0.10, mean >= 0.55).

``--arith1t`` (session 35, the declared fourth): the same for both designs' builds trained at 1
torch thread (``arith1t/build_{A,v5}_seed<S>.txt``), then per seed and design how far the thread
count moved the worst share (1 thread minus the 2-thread builds above).

``--zen4`` (session 40, ``results/zen4/``): both designs' 1-thread builds on an AMD EPYC Zen 4
(AVX-512 kernels), then per seed and design how far the host moved the worst share (Zen 4 minus
the Zen 3's 1-thread builds, ``--arith1t``).
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import statistics
from pathlib import Path

from experiments.stats import paired_t

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent
# each design's builds: the first existing file of its patterns (v5's seeds 6-11 were built here)
DESIGNS = {
    "v5 (add, reverse, cipher)": (
        (RESULTS / "zoo_v5_zen3" / "build_zoo_seed{}.txt", HERE / "build_v5_seed{}.txt"),
        ("add", "reverse", "cipher"),
    ),
    "A (add, atbash, cipher)": ((HERE / "build_A_seed{}.txt",), ("add", "atbash", "cipher")),
}
# the same designs trained at 1 torch thread (declared fourth)
DESIGNS_1T = {
    "v5 (add, reverse, cipher)": ((HERE / "arith1t" / "build_v5_seed{}.txt",), ("add", "reverse", "cipher")),
    "A (add, atbash, cipher)": ((HERE / "arith1t" / "build_A_seed{}.txt",), ("add", "atbash", "cipher")),
}  # fmt: skip
# the same designs at 1 torch thread on a second CPU family, an AMD EPYC Zen 4 (session 40)
ZEN4 = RESULTS / "zen4"
DESIGNS_ZEN4 = {
    "v5 (add, reverse, cipher)": ((ZEN4 / "build_v5_seed{}.txt",), ("add", "reverse", "cipher")),
    "A (add, atbash, cipher)": ((ZEN4 / "build_A_seed{}.txt",), ("add", "atbash", "cipher")),
}


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


machines = _load(RESULTS / "zoo_v5_intel" / "compare_machines.py")


def parse(path: Path, tasks: tuple[str, ...]) -> dict:
    """compare_machines' figures plus the best merge's per-task shares and the trade-off check."""
    r = machines.parse(path)
    flat = " ".join(machines._text(path).split())
    m = re.search(r"this merge's shares (.*?)\)", flat)
    shares = dict(re.findall(r"(\w+) (-?[\d.]+) \[", m.group(1))) if m else {}
    r["shares"] = {t: float(shares[t]) for t in tasks if t in shares}
    ties = r["kept"]["ties d0.5"]
    r["ties"] = {t: float(v) for t, v in zip(tasks, ties, strict=True) if v not in ("-", "?")}
    r["tradeoff"] = "ok no plain merge is as good as every expert everywhere" in flat
    r["tasks"] = tasks
    return r


def load(designs: dict, seeds: list[int]) -> dict[str, dict[int, dict]]:
    """Each design's parsed builds by seed (the first existing file of its patterns)."""
    runs: dict[str, dict[int, dict]] = {}
    for name, (patterns, tasks) in designs.items():
        runs[name] = {}
        for s in seeds:
            paths = [Path(str(p).format(s)) for p in patterns]
            path = next((p for p in paths if p.exists()), None)
            if path is not None:
                runs[name][s] = parse(path, tasks)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--arith1t", action="store_true", help="the builds at 1 torch thread")
    which.add_argument("--zen4", action="store_true", help="the 1-thread builds on the Zen 4")
    args = parser.parse_args()
    runs = load(DESIGNS_ZEN4 if args.zen4 else DESIGNS_1T if args.arith1t else DESIGNS, args.seeds)
    print("| seed | design | base on the tasks | experts on their own task | gains | best judged "
          "merge: worst share [95 %] | its shares | TIES d0.5 keeps | trade-off | regime |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in args.seeds:
        for name, r in ((n, runs[n].get(s)) for n in runs):
            if r is None:
                continue
            tasks = r["tasks"]
            own = [r["table"][t][i] for i, t in enumerate(tasks)]
            iv = f" [{r['interval'][0]}, {r['interval'][1]}]" if r["interval"] else ""
            print(
                f"| {s} | {name} | " + " / ".join(f"{x:.3f}" for x in r["table"]["base"])
                + " | " + " / ".join(f"{x:.3f}" for x in own)
                + " | " + " / ".join(f"{r['gains'][t]:+.3f}" for t in tasks)
                + f" | {r['best']}: {r['worst']:.2f}{iv}"
                + " | " + " / ".join(f"{r['shares'].get(t, float('nan')):.2f}" for t in tasks)
                + " | " + " / ".join(r["kept"]["ties d0.5"])
                + " | " + ("ok" if r["tradeoff"] else "NO")
                + " | " + ("holds" if r["holds"] else "does not hold") + " |"
            )  # fmt: skip
    print()
    for name, rs in runs.items():
        if not rs:
            continue
        seeds = sorted(rs)
        tasks = rs[seeds[0]]["tasks"]
        held = sum(rs[s]["holds"] for s in seeds)
        worst = [rs[s]["worst"] for s in seeds]
        spread = {t: max(rs[s]["table"][t][i] for s in seeds) - min(rs[s]["table"][t][i] for s in seeds)
                  for i, t in enumerate(tasks)}  # fmt: skip
        gains = min(rs[s]["gains"][t] for s in seeds for t in tasks)
        print(f"{name}: seeds {seeds}: holds on {held} of {len(seeds)}; worst share mean "
              f"{statistics.mean(worst):.3f} (range {min(worst):.2f}-{max(worst):.2f}); smallest "
              f"gain {gains:+.3f}; own-task spread "
              + ", ".join(f"{t} {v:.3f}" for t, v in spread.items()))  # fmt: skip
    v5, a = runs.values()
    both = [s for s in args.seeds if s in v5 and s in a]
    if len(both) >= 2:
        print()
        for label, get in (
            ("worst share", lambda r: r["worst"]),
            ("best merge's add share", lambda r: r["shares"].get("add", float("nan"))),
            ("best merge's cipher share", lambda r: r["shares"].get("cipher", float("nan"))),
            ("TIES d0.5 add share", lambda r: r["ties"].get("add", float("nan"))),
            ("TIES d0.5 cipher share", lambda r: r["ties"].get("cipher", float("nan"))),
        ):
            diffs = [get(a[s]) - get(v5[s]) for s in both]
            mean, half = paired_t(diffs)
            print(f"{label}, A minus v5 (seeds {both}): {mean:+.3f} [{mean - half:+.3f}, "
                  f"{mean + half:+.3f}], higher on {sum(d > 0 for d in diffs)} of {len(diffs)}")  # fmt: skip
    if len(a) == len(args.seeds):
        seeds = sorted(a)
        tasks = a[seeds[0]]["tasks"]
        held = sum(a[s]["holds"] for s in seeds)
        spreads = [max(a[s]["table"][t][i] for s in seeds) - min(a[s]["table"][t][i] for s in seeds)
                   for i, t in enumerate(tasks)]  # fmt: skip
        mean = statistics.mean(a[s]["worst"] for s in seeds)
        lead = held == len(seeds) and max(spreads) <= 0.10 and mean >= 0.55
        print(f"\nthe declared lead rule (README; declared for seeds 0-5) over seeds {seeds}: holds "
              f"{held} of {len(seeds)}, largest own-task spread "
              f"{max(spreads):.3f}, mean worst share {mean:.3f}: "
              + (("A's lead carries to this CPU family" if lead else "A's lead does not carry")
                 if args.zen4 else "a lead (not adopted this session)" if lead else "not a lead"))  # fmt: skip
    if args.arith1t or args.zen4:
        two = load(DESIGNS_1T if args.zen4 else DESIGNS, args.seeds)
        print("\nworst share, Zen 4 minus Zen 3, both at 1 thread (the same seed and design):"
              if args.zen4 else
              "\nworst share, 1 thread minus 2 threads (the same host, seed and design):")  # fmt: skip
        for name, rs in runs.items():
            seeds = [s for s in args.seeds if s in rs and s in two[name]]
            diffs = [rs[s]["worst"] - two[name][s]["worst"] for s in seeds]
            if not diffs:
                continue
            flips = sum(rs[s]["holds"] != two[name][s]["holds"] for s in seeds)
            print(f"{name}: " + " / ".join(f"{d:+.2f}" for d in diffs)
                  + f" (seeds {seeds}); mean |difference| "
                  f"{statistics.mean(abs(d) for d in diffs):.3f}; verdict flips on {flips} of "
                  f"{len(seeds)}")  # fmt: skip


if __name__ == "__main__":
    main()
