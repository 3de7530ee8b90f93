"""Where a task-arithmetic merge loses an expert's gain: the scaling, or the other experts.

    python results/converged_base_study/scaling_vs_interference.py ZOO_DIR [LAMBDA ...]

For each λ (default 0.5 0.6 0.7) and each expert i, the TEST exact match on i's task of
- base + λ τ_i (its own task vector alone, scaled as in the merge), and
- base + λ Σ_j τ_j (task arithmetic of all the experts),
each as the share of i's gain over the base it keeps: the first is what the scaling alone costs,
the gap between them what the other experts' vectors cost (interference).
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, LlamaForCausalLM

from merge_env.pools.zoo import load_zoo
from merge_env.scoring.evaluate import Evaluator


def main() -> None:
    root = Path(sys.argv[1])
    lambdas = [float(x) for x in sys.argv[2:]] or [0.5, 0.6, 0.7]
    torch.set_num_threads(2)
    zoo = load_zoo(root)
    base = load_file(str(zoo.base / "model.safetensors"))
    experts = {t: load_file(str(p / "model.safetensors")) for t, p in zoo.experts.items()}
    tasks = {t.name: t for t in zoo.tasks}
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device="cpu")
    model = LlamaForCausalLM.from_pretrained(zoo.base).eval()

    def score(state: dict, task: str) -> float:
        model.load_state_dict(state)
        return evaluator.score_tasks(model, [tasks[task]], "test")[task].exact_match

    def moved(lam: float, names: list[str]) -> dict:
        return {
            k: (base[k].double() + lam * sum(experts[n][k].double() - base[k].double()
                                             for n in names)).float()
            for k in base
        }  # fmt: skip

    print(f"{root.name}: share of each expert's TEST gain kept, its vector alone | all three")
    for task in experts:
        at_base, own = score(base, task), score(experts[task], task)
        cells = []
        for lam in lambdas:
            alone = (score(moved(lam, [task]), task) - at_base) / (own - at_base)
            merged = (score(moved(lam, list(experts)), task) - at_base) / (own - at_base)
            cells.append(f"λ{lam:g} {alone:.2f} | {merged:.2f}")
        print(f"  {task} (base {at_base:.3f}, expert {own:.3f}): " + "   ".join(cells))


if __name__ == "__main__":
    main()
