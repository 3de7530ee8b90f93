"""The held-out agent comparison on two hosts: AMD (session 19, one process per run) against the
Intel host's `make figures` (session 27). The zoos are each host's own builds of seeds 1 and 2,
so hypervolumes do not compare across hosts; the orderings and the claims do.

    python results/zoo_v5_intel/heldout_hosts.py results/zoo_v5/agents_ties_b200_zoo_v5.json \\
        results/figures/heldout/figures.json
"""

from __future__ import annotations

import json
import sys


def comparisons(path: str) -> dict[int, dict]:
    data = json.loads(open(path).read())
    if "sections" in data:  # figures.json
        data = data["sections"]["compare"]["result"]
    return {c["zoo_seed"]: c for c in data["comparisons"]}


def order(c: dict, split: str) -> list[str]:
    return sorted(c["agents"], key=lambda a: -c["agents"][a][split]["mean"])


def main(amd: str, intel: str) -> None:
    hosts = {"AMD (session 19)": comparisons(amd), "Intel (session 27)": comparisons(intel)}
    print("| zoo seed | host | search: agents best first | test: agents best first | PPO rank "
          "search / test | PPO vs best baseline (MWU p) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for zoo in sorted(set.intersection(*(set(h) for h in hosts.values()))):
        for host, by_zoo in hosts.items():
            c = by_zoo[zoo]
            s, t = order(c, "search"), order(c, "test")
            vs = c["agents"]["ppo"]["vs_best"]
            print(f"| {zoo} | {host} | {', '.join(s)} | {', '.join(t)} | "
                  f"{s.index('ppo') + 1} / {t.index('ppo') + 1} of {len(s)} | "
                  f"{vs['baseline']}: {vs['p_mannwhitney']:.2g} |")  # fmt: skip


if __name__ == "__main__":
    main(*sys.argv[1:3])
