"""SmolLM2 candidate v5-L on the Zen 4 against the Zen 3, by seed, under session 39's rule.

    python results/zen4/smollm2_table.py

Reads this folder's ``study_v5l_seed<S>.txt`` (the Zen 4, session 40) and
``results/smollm2/study_v5l_seed<S>.txt`` (the Zen 3, sessions 38-39): ``build_zoo --pool smollm2``
outputs. From each build's "fine-tune regime" table (TEST split, exact match) it prints the base's
and each expert's own-task cells, the gains, the share of each gain TIES d0.5 and task arithmetic
0.5 keep, session 39's rule ((a) every gain >= 0.30; (b) TIES d0.5 at lambda 1 keeps >= 0.50 of
every gain; (c) no fixed merge -- TIES d0.5, task arithmetic 0.5 and 1.0 -- within 0.05 of every
expert on that expert's task), the builder's whole verdict, the weights digest and the fine-tune
time; then each host's count and the Zen 4 minus Zen 3 differences of the seeds both built.
"""

from __future__ import annotations

import re
import runpy
import statistics
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
HOSTS = {"Zen 4": HERE, "Zen 3": HERE.parent / "smollm2"}
TASKS = ("add", "reverse", "cipher")
FIXED = ("ties d0.5", "task arith 0.5", "task arith 1.0")
N_TEST = 64  # the pool's test examples a task

# the regime table's parser the earlier studies committed (results/ is not a package: run its file)
machines = SimpleNamespace(
    **runpy.run_path(str(HERE.parent / "zoo_v5_intel" / "compare_machines.py"))
)


def parse(path: Path) -> dict:
    """The cells of the regime table, the digest, the fine-tune time and the builder's verdict."""
    regime = machines.parse(path)  # the regime table's parser the earlier studies committed
    # exact match over 64 test examples, printed to 3 digits: back to the exact fraction
    rows = {name: tuple(round(x * N_TEST) / N_TEST for x in cells)
            for name, cells in regime["table"].items()}  # fmt: skip
    flat = " ".join(machines._text(path).split())
    digest = re.search(r"weights sha256 (\w+)", flat).group(1)
    seconds = float(re.search(r"fine-tuning ([\d.]+) s", flat).group(1))
    assert regime["holds"] or "regime does NOT hold" in flat, path
    return {"rows": rows, "digest": digest, "seconds": seconds, "builder": regime["holds"]}


def judge(r: dict) -> dict:
    rows = r["rows"]
    base = rows["base"]
    own = [rows[t][i] for i, t in enumerate(TASKS)]
    gains = [o - b for o, b in zip(own, base, strict=True)]
    share = {m: [(rows[m][i] - base[i]) / g for i, g in enumerate(gains)] for m in FIXED}
    a = min(gains) >= 0.30 - 1e-9
    b = min(share["ties d0.5"]) >= 0.50 - 1e-9
    c = not any(all(rows[m][i] >= own[i] - 0.05 for i in range(3)) for m in FIXED)
    return {"own": own, "base": base, "gains": gains, "share": share, "a": a, "b": b, "c": c}


def main() -> None:
    runs: dict[str, dict[int, dict]] = {}
    for host, folder in HOSTS.items():
        runs[host] = {}
        for path in sorted(folder.glob("study_v5l_seed*.txt")):
            seed = int(re.search(r"seed(\d+)", path.name).group(1))
            r = parse(path)
            runs[host][seed] = {**r, **judge(r)}
    print("| host | seed | base add / reverse / cipher | experts, own task | gains | TIES d0.5 keeps "
          "| task arith 0.5 keeps | (a) (b) (c) | rule | builder's verdict | fine-tuning | digest |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for host, rs in runs.items():
        for s, r in sorted(rs.items()):
            rule = r["a"] and r["b"] and r["c"]
            print(f"| {host} | {s} | " + " / ".join(f"{x:.3f}" for x in r["base"])
                  + " | " + " / ".join(f"{x:.3f}" for x in r["own"])
                  + " | " + " / ".join(f"{x:+.3f}" for x in r["gains"])
                  + " | " + " / ".join(f"{x:.2f}" for x in r["share"]["ties d0.5"])
                  + " | " + " / ".join(f"{x:.2f}" for x in r["share"]["task arith 0.5"])
                  + " | " + " ".join("ok" if r[k] else "NO" for k in "abc")
                  + f" | {'holds' if rule else 'fails'} | {'holds' if r['builder'] else 'fails'}"
                  f" | {r['seconds']:,.1f} s | `{r['digest']}` |")  # fmt: skip
    print()
    for host, rs in runs.items():
        if not rs:
            continue
        rule = [s for s, r in sorted(rs.items()) if r["a"] and r["b"] and r["c"]]
        builder = [s for s, r in sorted(rs.items()) if r["builder"]]
        worst = [min(r["share"]["ties d0.5"]) for r in rs.values()]
        spread = {t: max(r["own"][i] for r in rs.values()) - min(r["own"][i] for r in rs.values())
                  for i, t in enumerate(TASKS)}  # fmt: skip
        print(f"{host}: seeds {sorted(rs)}: the rule holds on {len(rule)} of {len(rs)} {rule}; the "
              f"builder's verdict on {len(builder)} of {len(rs)}; TIES d0.5's worst share mean "
              f"{statistics.mean(worst):.3f} (range {min(worst):.2f}-{max(worst):.2f}); own-task "
              "spread " + ", ".join(f"{t} {v:.3f}" for t, v in spread.items()))  # fmt: skip
    both = sorted(set(runs["Zen 4"]) & set(runs["Zen 3"]))
    if both:
        print("\nZen 4 minus Zen 3, the same seed:")
        for s in both:
            z4, z3 = runs["Zen 4"][s], runs["Zen 3"][s]
            same = sum(z4["rows"][m] == z3["rows"][m] for m in z4["rows"] if m in z3["rows"])
            print(f"  seed {s}: own-task " + " / ".join(
                f"{x - y:+.3f}" for x, y in zip(z4["own"], z3["own"], strict=True))
                + "; TIES d0.5 shares " + " / ".join(
                f"{x - y:+.2f}" for x, y in zip(z4["share"]["ties d0.5"], z3["share"]["ties d0.5"], strict=True))
                + f"; rows identical {same} of {len(z4['rows'])}; digests "
                f"{'equal' if z4['digest'] == z3['digest'] else 'differ'}")  # fmt: skip


if __name__ == "__main__":
    main()
