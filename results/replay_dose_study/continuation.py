"""How much of a gain is the base simply trained on: the continuation control for variant RR.

    python results/replay_dose_study/continuation.py RESULTS_JSONL --seeds 0 1 2 3 4 5 \\
        [--json OUT] > continuation.md

For each zoo seed the cached zoo v5's base is trained further on its own pretraining mixture
alone (no task data), at the experts' learning rate and schedule, for v5's 900 expert steps and
for RR's 1,800. Prints the TEST exact match of the base, both continuations, the experts on their
own task and the best judged merge (v5's, judged as ``build_zoo`` does, and RR's, read from
``regime_variants``' RESULTS_JSONL), and the share of each expert's gain over the base that
the continuation alone reaches. Where the continuation reaches much of a gain, a merge's "kept
share" counts more pretraining that every expert carries, not the expert's own skill.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, LlamaForCausalLM

from merge_env.pools.cache import pinned_threads
from merge_env.pools.regime import assess_regime
from merge_env.pools.zoo import ZooConfig, _Trainer, build_zoo
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.recipe import BASE

RR = {"expert_replay": 0.9, "expert_steps": [1800, 1800, 1800]}


def continuation_scores(zoo, steps: int) -> dict[str, float]:
    """TEST exact match of ``zoo``'s base after ``steps`` more steps on its pretraining mixture."""
    cfg = zoo.config
    run = _Trainer(cfg, steps, False, "cpu")
    pretraining = run.rows("pretrain", cfg.per_task("base_rare_mass"))
    model = LlamaForCausalLM.from_pretrained(zoo.base)
    with pinned_threads():
        # the add expert's phase seed: the same batch-draw stream its replay starts from
        run.fit(model, pretraining, cfg.base_mix, steps, cfg.per_task("expert_lr")[0], "expert:add")
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device="cpu")
    scored = evaluator.score_tasks(model.eval(), zoo.tasks, "test")
    return {t: s.exact_match for t, s in scored.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    lines = [json.loads(x) for x in args.results.read_text().splitlines() if x.strip()]
    rr_runs = {r["seed"]: r for r in lines if r["settings"] == RR and not r["lora"]}
    records = []
    print("| seed | task | base | +900 steps of pretraining | +1,800 | v5 expert | RR expert | "
          "v5 best merge | RR best merge | share of the v5 / RR gain the continuation reaches |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        zoo = build_zoo(dataclasses.replace(ZooConfig.preset("default"), seed=seed), progress=False)
        v5 = assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)
        rr = rr_runs[seed]
        cont = {n: continuation_scores(zoo, n) for n in (900, 1800)}
        v5_best, rr_best = v5.regime.best_judged[0], rr["best"][0]
        for task in (t.name for t in zoo.tasks):
            base = v5.scores[BASE][task]
            v5_own, rr_own = v5.scores[task][task], rr["scores"][task][task]
            v5_reach = (cont[900][task] - base) / (v5_own - base)
            rr_reach = (cont[1800][task] - base) / (rr_own - base)
            print(f"| {seed} | {task} | {base:.3f} | {cont[900][task]:.3f} | "
                  f"{cont[1800][task]:.3f} | {v5_own:.3f} | {rr_own:.3f} | "
                  f"{v5.scores[v5_best][task]:.3f} | {rr['scores'][rr_best][task]:.3f} | "
                  f"{v5_reach:.2f} / {rr_reach:.2f} |")  # fmt: skip
            records.append({"seed": seed, "task": task, "base": base,
                            "continuation_900": cont[900][task],
                            "continuation_1800": cont[1800][task], "v5_expert": v5_own,
                            "rr_expert": rr_own, "v5_best": [v5_best, v5.scores[v5_best][task]],
                            "rr_best": [rr_best, rr["scores"][rr_best][task]]})  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
