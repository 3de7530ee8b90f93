"""MergeME on whole-text zoos against the answer-only zoos of the same training seeds.

    python results/moe_whole_text/collect.py

Reads the MoE runs of ``make figures``' MoE sections (``figures.json``): the whole-text zoos
(``figures/``, zoo v6 seeds 1-3, the moe section with ``pool.loss_on=text``; ``figures_z45/``,
seeds 4 and 5, the moe_text section) and the answer-only zoos of the same seeds
(``results/zoo_v6/figures_heldout10/`` for 1 and 2, ``answer_z3/``, ``answer_z45/``); MoE seed 100.
Per zoo and loss: how often perplexity routing sends a TEST prompt to its own task's expert
(3 tasks: chance 1/3), the macro exact match of the rows MergeME's claims compare, and each
claim's verdict under ``experiments.moe.claim_holds`` (strictly above every other value).
Prints markdown; ``collect.md`` is its output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments.figures import routing_share  # noqa: E402
from experiments.moe import claim_holds  # noqa: E402

SOURCES = {
    "text": [HERE / "figures" / "figures.json", HERE / "figures_z45" / "figures.json"],
    "answer": [HERE.parent / "zoo_v6" / "figures_heldout10" / "figures.json",
               HERE / "answer_z3" / "figures.json", HERE / "answer_z45" / "figures.json"],
}  # fmt: skip
ROWS = {
    "dense TIES": "dense ties",
    "Mixtral avg": "mixtral (average, hidden_mean)",
    "Mixtral TIES": "mixtral (ties, hidden_mean)",
    "Mixtral DARE": "mixtral (dare, hidden_mean)",
    "PPL merged (TIES)": "ppl merged-attn (ties)",
    "PPL separate": "ppl separate-attn",
    "oracle (TIES)": "oracle route, merged-attn (ties)",
}
CLAIMS = {
    "(1) TIES > avg": ["mixtral (ties, hidden_mean)", "mixtral (average, hidden_mean)"],
    "(1) DARE > avg": ["mixtral (dare, hidden_mean)", "mixtral (average, hidden_mean)"],
    "(2) separate > merged, dense": ["ppl separate-attn", "ppl merged-attn (ties)", "dense ties"],
}


def runs() -> dict[tuple[int, str], dict]:
    """(zoo seed, loss) -> the MoE run, for the zoo seeds of the whole-text runs."""
    out = {}
    for loss, files in SOURCES.items():
        for f in files:
            if f.is_file():  # seeds 1-3 ran the moe section with pool.loss_on=text, 4-5 moe_text
                sections = json.loads(f.read_text())["sections"]
                for name in ("moe", "moe_text"):
                    for run in sections.get(name, {}).get("result", {}).get("runs", []):
                        out[(run["zoo_seed"], loss)] = run
    return out


def gains(text: str) -> dict[str, float]:
    """Each expert's own-task gain over the base, from a regime_check.py output."""
    out = {}
    for line in text.splitlines():
        if line.startswith("expert ") and ": gain " in line:
            task = line.split()[1].rstrip(":")
            out[task] = float(line.split(": gain ")[1].split(";")[0])
    return out


def regime_table(seeds: list[int]) -> None:
    """The outside check's gains and verdicts, answer-only against whole-text, per seed."""
    print("## The outside check (mergekit + plain transformers, `regime_check.py`), TEST\n")
    print("| zoo | loss on | own-task gains | mean gain | verdict |")
    print("|---|---|---|---|---|")
    for z in seeds:
        for loss, folder in (("answer", HERE.parent / "zoo_v6"), ("text", HERE)):
            f = folder / f"regime_check_seed{z}.txt"
            if not f.is_file():
                continue
            text = f.read_text()
            g = gains(text)
            verdict = next((ln.split(":")[0] for ln in text.splitlines()
                            if ln.startswith("regime ")), "?")  # fmt: skip
            shown = " / ".join(f"{t} {v:+.3f}" for t, v in g.items())
            print(f"| {z} | {loss} | {shown} | {sum(g.values()) / len(g):+.3f} | {verdict} |")
    print()


def main() -> None:
    found = runs()
    seeds = sorted({z for z, loss in found if loss == "text"})
    regime_table(seeds)
    print("## Perplexity routing: share of TEST prompts sent to their own task's expert\n")
    print("| zoo | loss on | separate attention (per task) | merged attention, TIES (per task) |")
    print("|---|---|---|---|")
    for z in seeds:
        for loss in ("answer", "text"):
            if (z, loss) not in found:
                continue
            cells = []
            for row in ("ppl separate-attn", "ppl merged-attn (ties)"):
                share, per = routing_share(found[(z, loss)]["confusion"][row])
                cells.append(f"{share:.3f} ({', '.join(f'{t} {v:.2f}' for t, v in per.items())})")
            print(f"| {z} | {loss} | {cells[0]} | {cells[1]} |")
    print("\n## Macro exact match on TEST\n")
    print("| zoo | loss on | " + " | ".join(ROWS) + " |")
    print("|---|---|" + "---|" * len(ROWS))
    for z in seeds:
        for loss in ("answer", "text"):
            if (z, loss) in found:
                macro = found[(z, loss)]["macro"]
                cells = [f"{macro[r]['exact_match']:.3f}" for r in ROWS.values()]
                print(f"| {z} | {loss} | " + " | ".join(cells) + " |")
    print("\n## MergeME's claims (macro exact match; strictly above each other value)\n")
    print("| claim | loss on | " + " | ".join(f"zoo {z}" for z in seeds) + " | holds on |")
    print("|---|---|" + "---|" * len(seeds) + "---|")
    for claim, chain in CLAIMS.items():
        for loss in ("answer", "text"):
            cells, held, n = [], 0, 0
            for z in seeds:
                if (z, loss) not in found:
                    cells.append("-")
                    continue
                values = [found[(z, loss)]["macro"][r]["exact_match"] for r in chain]
                holds = claim_holds(values)
                held, n = held + holds, n + 1
                cells.append(("holds" if holds else "fails") + " (" +
                             " / ".join(f"{v:.3f}" for v in values) + ")")  # fmt: skip
            print(f"| {claim} | {loss} | " + " | ".join(cells) + f" | {held} of {n} |")


if __name__ == "__main__":
    main()
