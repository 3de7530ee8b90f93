"""MergeME on SmolLM2: the answer-only pool v5-L (study S) and the real-domain pool (study D).

    python results/moe_smollm2/collect.py

Reads each run's ``moe_results.json`` (``answer_pool0_rerun/``, whose scores equal
``answer_pool0/``'s and which adds the claims' intervals; ``domains_pool0/``; MoE seed 100, TEST
split) and prints markdown (``collect.md`` is its output): each expert's gain over the base on
every task in the task's headline metric (exact match for S, the continuation's log-likelihood
per token for D), how often perplexity routing sends a TEST prompt to its own task's expert, and
the rows and verdicts of MergeME's claims as ``experiments.moe`` checked them (strictly above
every other value).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments.figures import routing_share  # noqa: E402

RUNS = {"S: pool v5-L, answer-only": HERE / "answer_pool0_rerun",
        "D: real-domain experts": HERE / "domains_pool0"}  # fmt: skip
METRIC = {"S: pool v5-L, answer-only": "exact_match", "D: real-domain experts": "loglik"}
FIRST = HERE / "answer_pool0" / "moe_results.json"  # S's first run, on e81b0eb


def study(title: str, folder: Path) -> list[str]:
    path = folder / "moe_results.json"
    if not path.is_file():
        return [f"## {title}", "", f"Not run: no `{path.relative_to(HERE.parents[1])}`.", ""]
    res = json.loads(path.read_text())
    tasks, scores, metric = res["tasks"], res["scores"], METRIC[title]
    lines = [f"## {title} ({res['split']} split, {metric}, {res['seconds']} s)", ""]
    lines += ["| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for row in ["base", *[f"expert {t}" for t in tasks], "dense ties"]:
        cells = [f"{scores[row][t][metric]:.3f}" for t in tasks]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Each expert's gain over the base (own task in bold):", ""]
    lines += ["| expert | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for e in tasks:
        gains = [scores[f"expert {e}"][t][metric] - scores["base"][t][metric] for t in tasks]
        cells = [f"**{g:+.3f}**" if t == e else f"{g:+.3f}" for t, g in zip(tasks, gains)]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    lines += ["", "Perplexity routing, share of TEST prompts sent to their own task's expert:", ""]
    for label, confusion in res["confusion"].items():
        overall, per = routing_share(confusion)
        each = ", ".join(f"{t} {v:.2f}" for t, v in per.items())
        lines.append(f"- {label}: **{overall:.3f}** ({each}; chance {1 / len(tasks):.2f})")
    lines += ["", "MergeME's claims (macro-averages):", ""]
    for o in res["ordering"]:
        ci = ""
        if "intervals" in o:  # runs before becba4f have none
            each = ", ".join(f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in o["intervals"])
            ci = f"; first minus each other, paired 95 % interval {each}" + (
                " (every one above 0)" if o["significant"] else " (not every one above 0)"
            )
        lines.append(f"- {o['claim']} on {o['metric']}: {o['values']} -> {o['verdict']}{ci}")
    return [*lines, ""]


def same_scores() -> list[str]:
    """Whether S's re-run scored every row and task as its first run did, bit for bit."""
    rerun = RUNS["S: pool v5-L, answer-only"] / "moe_results.json"
    if not (FIRST.is_file() and rerun.is_file()):
        return []
    a, b = (json.loads(p.read_text())["scores"] for p in (FIRST, rerun))
    same = a == b
    return [f"S's re-run against its first run: every score {'equal' if same else 'NOT equal'}"
            f" ({len(a)} rows x {len(next(iter(a.values())))} tasks, every field).", ""]  # fmt: skip


def main() -> None:
    out = ["# MergeME on SmolLM2-135M-Instruct (session 47)", ""]
    for title, folder in RUNS.items():
        out += study(title, folder)
    out += same_scores()
    print("\n".join(out))


if __name__ == "__main__":
    main()
