"""How often MergeME's perplexity routing sends a TEST prompt to its own task's expert, from
``make figures``' MoE runs on zoo v6 (``figures_heldout10/figures.json``; 3 tasks, chance 1/3).

    python results/zoo_v6/routing_share.py

Per run and routed row: the share over all prompts, then per task. The zoo's base and experts
learn answers only (the loss masks the prompt), so a prompt's perplexity under an expert says
little about its task; the trained heterogeneous router is shown for contrast.
"""

from __future__ import annotations

import json
from pathlib import Path

FIGURES = Path(__file__).resolve().parent / "figures_heldout10" / "figures.json"


def main() -> None:
    runs = json.loads(FIGURES.read_text())["sections"]["moe"]["result"]["runs"]
    for run in runs:
        for row, confusion in run["confusion"].items():
            total = sum(sum(c.values()) for c in confusion.values())
            right = {t: c.get(t, 0) / sum(c.values()) for t, c in confusion.items()}
            overall = sum(c.get(t, 0) for t, c in confusion.items()) / total
            tasks = ", ".join(f"{t} {v:.3f}" for t, v in right.items())
            print(f"zoo {run['zoo_seed']} seed {run['seed']} | {row}: {overall:.3f} ({tasks})")


if __name__ == "__main__":
    main()
