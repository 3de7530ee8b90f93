"""Study D again on the TEST passages that were not in the training text (a review's finding).

    python results/moe_smollm2/clean_subset.py

Session 47's domain pool (version 1) split documents by name only, and documents copy each other
(the reference's ``specialnames`` topic holds whole training topics; codec modules are
near-copies). ``merge_env.pools.domains.leaks`` (version 2's filter) marks a passage whose
continuation, with the 64 characters before it, occurs word for word in a training document of its
domain (version 2's split and corpus). This script finds those among D's TEST passages (the pool
manifest keeps them), then recomputes every row's macro log-likelihood and the claims' paired
intervals on the rest, from the per-example results ``moe_results.json`` keeps: no model is run.
Prints markdown (``clean_subset.md`` is its output).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments.stats import paired_macro_ci  # noqa: E402
from merge_env.pools import domains  # noqa: E402
from merge_env.pools.cache import tasks_from_records  # noqa: E402
from merge_env.scoring.evaluate import metric_of_rows  # noqa: E402

RUN = HERE / "domains_pool0"
CLAIMS = [
    ("ppl separate-attn", ["ppl merged-attn (ties)", "dense ties"]),
    ("mixtral (ties, hidden_mean)", ["mixtral (average, hidden_mean)"]),
    ("mixtral (dare, hidden_mean)", ["mixtral (average, hidden_mean)"]),
    ("oracle route, merged-attn (ties)", ["oracle route, merged-attn (average)"]),
]


def loglik(rows: np.ndarray) -> float:
    return float(metric_of_rows(rows, "loglik"))


def macro(rows: dict[str, np.ndarray]) -> float:
    return float(np.mean([loglik(r) for r in rows.values()]))


def main() -> None:
    manifest = json.loads((RUN / "pool_manifest.json").read_text())
    res = json.loads((RUN / "moe_results.json").read_text())
    config = domains.DomainConfig(**manifest["config"])
    corpus = domains.load_corpus(config.domains)
    out = ["# Study D on the TEST passages not found in the training text", ""]
    keep = {}
    for task in tasks_from_records(manifest["tasks"]):
        train = [t for n, t in corpus[task.name]
                 if domains.split_of(n, config.task_seed, config.held_out) == "train"]  # fmt: skip
        keep[task.name] = [i for i, ex in enumerate(task.test) if not domains.leaks(ex, train)]
        out.append(f"- {task.name}: {len(task.test) - len(keep[task.name])} of {len(task.test)} "
                   f"TEST passages leak; {len(keep[task.name])} kept")  # fmt: skip
    rows = {label: {t: np.asarray(v, dtype=float)[keep[t]] for t, v in per.items()}
            for label, per in res["examples"].items()}  # fmt: skip
    names = list(keep)
    out += ["", "| row | " + " | ".join(names) + " | macro | macro, all passages |",
            "|---|" + "---|" * (len(names) + 2)]  # fmt: skip
    for label, r in rows.items():
        cells = [f"{loglik(r[t]):.3f}" for t in names]
        out.append(f"| {label} | " + " | ".join(cells) +
                   f" | {macro(r):.4f} | {res['macro'][label]['loglik']:.4f} |")  # fmt: skip
    base = rows["base"]
    out += ["", "Experts' gains over the base on the kept passages (log-likelihood per token):", ""]
    for e in names:
        r = rows[f"expert {e}"]
        gains = [loglik(r[t]) - loglik(base[t]) for t in names]
        out.append(f"- expert {e}: " + ", ".join(f"{t} {g:+.3f}" for t, g in zip(names, gains)))
    out += ["", "MergeME's claims on the kept passages (macro log-likelihood; paired 95 % "
            "intervals of the first row minus each other):", ""]  # fmt: skip
    for first, others in CLAIMS:
        vals = [macro(rows[x]) for x in [first, *others]]
        cis = [paired_macro_ci(rows[first], rows[o], "loglik", seed=100) for o in others]
        holds = all(vals[0] > v for v in vals[1:])
        each = ", ".join(f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in cis)
        apart = "every interval above 0" if all(lo > 0 for lo, _ in cis) else "not apart from 0"
        out.append(f"- {first} > {', '.join(others)}: {[round(v, 4) for v in vals]} -> "
                   f"{'holds' if holds else 'does NOT hold'}; {each} ({apart})")  # fmt: skip
    print("\n".join(out))


if __name__ == "__main__":
    main()
