"""How much of a gain is the base simply trained on: the continuation control for variant RR.

    python results/replay_dose_study/continuation.py RESULTS_JSONL --seeds 0 1 2 3 4 5 \\
        [--json OUT] > continuation.md
    python results/replay_dose_study/continuation.py OUT --from-json    # the table again

For each zoo seed the cached zoo v5's base is trained further on its own pretraining mixture
alone (no task data), at the experts' learning rate and schedule, for v5's 900 expert steps and
for RR's 1,800. Prints the TEST exact match of the base, both continuations, the experts on their
own task and the best judged merge (v5's, judged as ``build_zoo`` does, and RR's, read from
``regime_variants``' RESULTS_JSONL), and the share of each expert's gain over the base that
the continuation alone reaches. Where the continuation reaches much of a gain, a merge's "kept
share" counts more pretraining that every expert carries, not the expert's own skill; so each
seed's worst share is also counted from the continuation of the same length: the share of the
way from it to the expert that the best merge covers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoTokenizer, LlamaForCausalLM

from merge_env.pools.cache import pinned_threads
from merge_env.pools.regime import assess_regime
from merge_env.pools.zoo import ZooConfig, _Trainer, build_zoo
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.recipe import BASE

RR = {"expert_replay": 0.9, "expert_steps": [1800, 1800, 1800]}
# two-sided 95 % Student t quantiles by degrees of freedom
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


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


def measure(results: Path, seeds: list[int]) -> list[dict]:
    """One record per (seed, task): the base, both continuations, the experts, the best merges."""
    lines = [json.loads(x) for x in results.read_text().splitlines() if x.strip()]
    rr_runs = {r["seed"]: r for r in lines if r["settings"] == RR and not r["lora"]}
    records = []
    for seed in seeds:
        zoo = build_zoo(dataclasses.replace(ZooConfig.preset("default"), seed=seed), progress=False)
        v5 = assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)
        rr = rr_runs[seed]
        cont = {n: continuation_scores(zoo, n) for n in (900, 1800)}
        v5_best, rr_best = v5.regime.best_judged[0], rr["best"][0]
        for task in (t.name for t in zoo.tasks):
            records.append({"seed": seed, "task": task, "base": v5.scores[BASE][task],
                            "continuation_900": cont[900][task],
                            "continuation_1800": cont[1800][task],
                            "v5_expert": v5.scores[task][task], "rr_expert": rr["scores"][task][task],
                            "v5_best": [v5_best, v5.scores[v5_best][task]],
                            "rr_best": [rr_best, rr["scores"][rr_best][task]]})  # fmt: skip
    return records


def share(merged: float, start: float, expert: float) -> float:
    """The share of the way from ``start`` to the expert's score that the merge covers."""
    return (merged - start) / (expert - start)


def report(records: list[dict]) -> None:
    """The per-task table, then each seed's worst share counted from the base and from the
    continuation of the same length (the gain pretraining alone does not give)."""
    print("| seed | task | base | +900 steps of pretraining | +1,800 | v5 expert | RR expert | "
          "v5 best merge | RR best merge | continuation reaches, of the v5 / RR gain | "
          "best merge keeps, from the continuation: v5 / RR |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst: dict[int, dict[str, list[float]]] = {}
    for r in records:
        v5_from = share(r["v5_best"][1], r["continuation_900"], r["v5_expert"])
        rr_from = share(r["rr_best"][1], r["continuation_1800"], r["rr_expert"])
        reach = (share(r["continuation_900"], r["base"], r["v5_expert"]),
                 share(r["continuation_1800"], r["base"], r["rr_expert"]))  # fmt: skip
        print(f"| {r['seed']} | {r['task']} | {r['base']:.3f} | {r['continuation_900']:.3f} | "
              f"{r['continuation_1800']:.3f} | {r['v5_expert']:.3f} | {r['rr_expert']:.3f} | "
              f"{r['v5_best'][1]:.3f} | {r['rr_best'][1]:.3f} | {reach[0]:.2f} / {reach[1]:.2f} | "
              f"{v5_from:.2f} / {rr_from:.2f} |")  # fmt: skip
        seed = worst.setdefault(r["seed"], {k: [] for k in ("v5", "rr", "v5_from", "rr_from")})
        seed["v5"].append(share(r["v5_best"][1], r["base"], r["v5_expert"]))
        seed["rr"].append(share(r["rr_best"][1], r["base"], r["rr_expert"]))
        seed["v5_from"].append(v5_from)
        seed["rr_from"].append(rr_from)
    print()
    print("| seed | worst share from the base: v5 / RR | from the continuation: v5 / RR |")
    print("|---|---|---|")
    for seed, w in worst.items():
        print(f"| {seed} | {min(w['v5']):.2f} / {min(w['rr']):.2f} | "
              f"{min(w['v5_from']):.2f} / {min(w['rr_from']):.2f} |")  # fmt: skip
    print()
    for label, v5_key, rr_key in (("from the base", "v5", "rr"),
                                  ("from the continuation", "v5_from", "rr_from")):  # fmt: skip
        diffs = [min(w[rr_key]) - min(w[v5_key]) for w in worst.values()]
        n = len(diffs)
        if n < 2:
            continue
        mean, half = statistics.mean(diffs), T975[n - 1] * statistics.stdev(diffs) / n**0.5
        print(f"- Worst share {label}, RR − v5 over {n} seeds: mean {mean:+.3f}, 95 % t interval "
              f"[{mean - half:+.3f}, {mean + half:+.3f}]; RR higher on "
              f"{sum(d > 0 for d in diffs)} of {n}.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="regime_variants' results.jsonl, or with "
                        "--from-json the records a run wrote")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--from-json", action="store_true",
                        help="RESULTS holds records written by --json: print them, train nothing")  # fmt: skip
    args = parser.parse_args()
    if args.from_json:
        records = json.loads(args.results.read_text())
    else:
        records = measure(args.results, args.seeds)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    report(records)


if __name__ == "__main__":
    main()
