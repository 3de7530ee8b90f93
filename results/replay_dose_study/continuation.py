"""How much of a gain is the base simply trained on: the continuation control for a variant.

    python results/replay_dose_study/continuation.py RESULTS_JSONL --seeds 0 1 2 3 4 5 \\
        [--json OUT] > continuation.md
    python results/replay_dose_study/continuation.py OUT --from-json    # the table again
    python results/replay_dose_study/continuation.py LR_RESULTS_JSONL --variant LR --json OUT

For each zoo seed the cached zoo v5's base is trained further on its own pretraining mixture
alone (no task data), on the experts' schedule, as long and at the rate of each side's experts:
v5's 900 steps at 6e-4, and RR's 1,800 (``--variant RR``) or LR's 900 at 3e-4 (``--variant
LR``). Prints the TEST exact match of the base, both continuations, the experts on their
own task and the best judged merge (v5's, judged as ``build_zoo`` does, and the variant's, read
from ``regime_variants``' RESULTS_JSONL), and the share of each expert's gain over the base that
the continuation alone reaches. Where the continuation reaches much of a gain, a merge's "kept
share" counts more pretraining that every expert carries, not the expert's own skill; so each
seed's worst share is also counted from the matching continuation: the share of the way from
it to the expert that the best merge covers.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from table import judged_v5, variant_runs  # this folder's table.py
from transformers import AutoTokenizer, LlamaForCausalLM

from experiments.stats import paired_t
from merge_env.pools.cache import pinned_threads
from merge_env.pools.zoo import _Trainer
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.recipe import BASE

# the continuation that matches each variant's experts (steps, learning rate; None: the zoo's
# expert rate); the variants' settings are table.py's
CONTINUATIONS = {"RR": (1800, None), "LR": (900, 3e-4)}
# records written before the variants had names (RR's): old key -> key
OLD_KEYS = {"continuation_900": "v5_continuation", "continuation_1800": "variant_continuation",
            "rr_expert": "variant_expert", "rr_best": "variant_best"}  # fmt: skip


def continuation_scores(zoo, steps: int, lr: float | None = None) -> dict[str, float]:
    """TEST exact match of ``zoo``'s base after ``steps`` more steps on its pretraining mixture,
    at ``lr`` (default: the zoo's expert rate) on the experts' schedule."""
    cfg = zoo.config
    run = _Trainer(cfg, steps, False, "cpu")
    pretraining = run.rows("pretrain", cfg.per_task("base_rare_mass"))
    model = LlamaForCausalLM.from_pretrained(zoo.base)
    rate = cfg.per_task("expert_lr")[0] if lr is None else lr
    with pinned_threads():
        # the add expert's phase seed: the same batch-draw stream its replay starts from
        run.fit(model, pretraining, cfg.base_mix, steps, rate, "expert:add")
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device="cpu")
    scored = evaluator.score_tasks(model.eval(), zoo.tasks, "test")
    return {t: s.exact_match for t, s in scored.items()}


def measure(results: Path, seeds: list[int], variant: str) -> list[dict]:
    """One record per (seed, task): the base, v5's and the variant's continuations, the experts,
    the best merges."""
    steps, lr = CONTINUATIONS[variant]
    runs = variant_runs(results, variant)
    records = []
    for seed in seeds:
        zoo, v5 = judged_v5(seed)
        other = runs[seed]
        v5_cont = continuation_scores(zoo, zoo.config.expert_steps[0])
        other_cont = continuation_scores(zoo, steps, lr)
        v5_best, other_best = v5.regime.best_judged[0], other["best"][0]
        for task in (t.name for t in zoo.tasks):
            records.append({"variant": variant, "seed": seed, "task": task,
                            "base": v5.scores[BASE][task], "v5_continuation": v5_cont[task],
                            "variant_continuation": other_cont[task],
                            "v5_expert": v5.scores[task][task],
                            "variant_expert": other["scores"][task][task],
                            "v5_best": [v5_best, v5.scores[v5_best][task]],
                            "variant_best": [other_best, other["scores"][other_best][task]]})  # fmt: skip
    return records


def named(record: dict) -> dict:
    """``record`` with the keys of named variants (RR's first records were written without)."""
    out = {OLD_KEYS.get(k, k): v for k, v in record.items()}
    out.setdefault("variant", "RR")
    return out


def share(merged: float, start: float, expert: float) -> float:
    """The share of the way from ``start`` to the expert's score that the merge covers."""
    return (merged - start) / (expert - start)


def report(records: list[dict]) -> None:
    """The per-task table, then each seed's worst share counted from the base and from the
    continuation that matches each side's experts (the gain pretraining alone does not give)."""
    name = records[0]["variant"]
    v5_steps, (steps, lr) = 900, CONTINUATIONS[name]
    rate = "" if lr is None else f" at lr {lr:g}"
    print(f"| seed | task | base | v5's continuation ({v5_steps} steps) | {name}'s ({steps:,} "
          f"steps{rate}) | v5 expert | {name} expert | v5 best merge | {name} best merge | "
          f"continuation reaches, of the v5 / {name} gain | best merge keeps, from the "
          f"continuation: v5 / {name} |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    worst: dict[int, dict[str, list[float]]] = {}
    for r in records:
        v5_from = share(r["v5_best"][1], r["v5_continuation"], r["v5_expert"])
        other_from = share(r["variant_best"][1], r["variant_continuation"], r["variant_expert"])
        reach = (share(r["v5_continuation"], r["base"], r["v5_expert"]),
                 share(r["variant_continuation"], r["base"], r["variant_expert"]))  # fmt: skip
        print(f"| {r['seed']} | {r['task']} | {r['base']:.3f} | {r['v5_continuation']:.3f} | "
              f"{r['variant_continuation']:.3f} | {r['v5_expert']:.3f} | "
              f"{r['variant_expert']:.3f} | {r['v5_best'][1]:.3f} | {r['variant_best'][1]:.3f} | "
              f"{reach[0]:.2f} / {reach[1]:.2f} | {v5_from:.2f} / {other_from:.2f} |")  # fmt: skip
        seed = worst.setdefault(r["seed"], {k: [] for k in ("v5", "other", "v5_from", "from")})
        seed["v5"].append(share(r["v5_best"][1], r["base"], r["v5_expert"]))
        seed["other"].append(share(r["variant_best"][1], r["base"], r["variant_expert"]))
        seed["v5_from"].append(v5_from)
        seed["from"].append(other_from)
    print()
    print(f"| seed | worst share from the base: v5 / {name} | from the continuation: v5 / {name} |")
    print("|---|---|---|")
    for seed, w in worst.items():
        print(f"| {seed} | {min(w['v5']):.2f} / {min(w['other']):.2f} | "
              f"{min(w['v5_from']):.2f} / {min(w['from']):.2f} |")  # fmt: skip
    print()
    for label, v5_key, key in (("from the base", "v5", "other"),
                               ("from the continuation", "v5_from", "from")):  # fmt: skip
        diffs = [min(w[key]) - min(w[v5_key]) for w in worst.values()]
        n = len(diffs)
        if n < 2:
            continue
        mean, half = paired_t(diffs)
        print(f"- Worst share {label}, {name} − v5 over {n} seeds: mean {mean:+.3f}, 95 % t "
              f"interval [{mean - half:+.3f}, {mean + half:+.3f}]; {name} higher on "
              f"{sum(d > 0 for d in diffs)} of {n}.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="regime_variants' results.jsonl, or with "
                        "--from-json the records a run wrote")  # fmt: skip
    parser.add_argument("--variant", choices=sorted(CONTINUATIONS), default="RR")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--json", type=Path, help="write the records here")
    parser.add_argument("--from-json", action="store_true",
                        help="RESULTS holds records written by --json: print them, train nothing")  # fmt: skip
    args = parser.parse_args()
    if args.from_json:
        records = [named(r) for r in json.loads(args.results.read_text())]
    else:
        records = measure(args.results, args.seeds, args.variant)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    report(records)


if __name__ == "__main__":
    main()
