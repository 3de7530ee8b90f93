"""Zoo v5's regime on three hosts, seed by seed: worst shares, verdicts, paired differences.

    python results/zoo_v5_zen3/hosts.py [--seeds 0 1 2 3 4 5]

Reads each host's ``build_zoo_seed<S>.txt`` (``python -m experiments.build_zoo --seed S``) with
``results/zoo_v5_intel/compare_machines.py``'s parser: the AMD EPYC hosts of sessions 19–20
(``results/zoo_v5``), the Intel Xeon of session 23 (``results/zoo_v5_intel``) and the AMD EPYC Zen
3 of session 32 (``results/zoo_v5_zen3``). Prints the best judged merge's worst share per seed and
host, each host's count of seeds that hold, every pair of hosts' paired mean difference with its
95 % Student t interval (one difference per seed), the smallest gain and each host's own-task
spread, and the pooled count over all (host, seed) builds.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from pathlib import Path

from check_outside import load_script  # this folder's, on the script's path

from experiments.stats import paired_t

RESULTS = Path(__file__).resolve().parent.parent
HOSTS = {
    "AMD EPYC (sessions 19–20)": RESULTS / "zoo_v5",
    "Intel Xeon fam 6 mod 207 (session 23)": RESULTS / "zoo_v5_intel",
    "AMD EPYC Zen 3 fam 25 mod 1 (session 32)": RESULTS / "zoo_v5_zen3",
}
TASKS = ("add", "reverse", "cipher")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    machines = load_script(RESULTS / "zoo_v5_intel" / "compare_machines.py")
    runs = {h: {s: machines.parse(d / f"build_zoo_seed{s}.txt") for s in args.seeds}
            for h, d in HOSTS.items()}  # fmt: skip
    print("| host | " + " | ".join(f"seed {s}" for s in args.seeds) + " | holds | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 2))
    for h, r in runs.items():
        cells = [f"{r[s]['worst']:.2f}" + (" ✓" if r[s]["holds"] else "") for s in args.seeds]
        mean = statistics.mean(r[s]["worst"] for s in args.seeds)
        held = sum(r[s]["holds"] for s in args.seeds)
        print(f"| {h} | " + " | ".join(cells) + f" | {held} of {len(args.seeds)} | {mean:.3f} |")
    print()
    for a, b in itertools.combinations(runs, 2):
        diffs = [runs[b][s]["worst"] - runs[a][s]["worst"] for s in args.seeds]
        mean, half = paired_t(diffs)
        print(f"worst share, {b} minus {a}: {mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] "
              f"(higher on {sum(d > 0 for d in diffs)} of {len(diffs)} seeds)")  # fmt: skip
    print()
    for h, r in runs.items():
        gains = min(r[s]["gains"][t] for s in args.seeds for t in TASKS)
        spread = {t: max(r[s]["table"][t][i] for s in args.seeds)
                  - min(r[s]["table"][t][i] for s in args.seeds) for i, t in enumerate(TASKS)}  # fmt: skip
        print(f"{h}: smallest gain {gains:+.3f}; own-task spread "
              + ", ".join(f"{t} {v:.3f}" for t, v in spread.items()))  # fmt: skip
    worst = [r[s]["worst"] for r in runs.values() for s in args.seeds]
    held = sum(r[s]["holds"] for r in runs.values() for s in args.seeds)
    print(f"pooled over {len(worst)} (host, seed) builds: holds on {held}; worst share mean "
          f"{statistics.mean(worst):.3f}, sd {statistics.stdev(worst):.3f}, "
          f"range {min(worst):.2f}-{max(worst):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
