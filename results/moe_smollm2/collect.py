"""MergeME on SmolLM2: the answer-only pool v5-L (study S), the real-domain pool (study D) and,
from session 48, pool version 2 at the defaults (D2), trained harder (DH) and at rank 64 (DR).

    python results/moe_smollm2/collect.py

Reads each run's ``moe_results.json`` (``answer_pool0_rerun/``, whose scores equal
``answer_pool0/``'s and which adds the claims' intervals; ``domains_pool0/``; MoE seed 100, TEST
split) and prints markdown (``collect.md`` is its output): each expert's gain over the base on
every task in the task's headline metric (exact match for S, the continuation's log-likelihood
per token for D), how often perplexity routing sends a TEST prompt to its own task's expert, and
the rows and verdicts of MergeME's claims as ``experiments.moe`` checked them (strictly above
every other value). Last, DH and DR each against D2 (the same TEST passages, so every comparison
is paired): each expert's own-domain gain, the share of it dense TIES keeps, routing, and the
routing claim, with percentile-bootstrap 95 % intervals over the passages (``N_BOOT`` resamples,
seed 0); and how each expert's own-domain change spreads over the passages.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from experiments.figures import routing_share  # noqa: E402
from merge_env.scoring.evaluate import metric_of_rows  # noqa: E402

RUNS = {"S: pool v5-L, answer-only": HERE / "answer_pool0_rerun",
        "D: real-domain experts": HERE / "domains_pool0",
        "D2: pool version 2, the defaults (session 48)": HERE / "domains_v2",
        "DH: pool version 2, trained harder (session 48)": HERE / "domains_v2_hard",
        "DR: pool version 2, rank 64 (session 48, an amendment)": HERE / "domains_v2_rank64",
        "D2s1: pool version 2, the defaults, training seed 1 (session 48, a second amendment)":
            HERE / "domains_v2_seed1"}  # fmt: skip
METRIC = {title: "exact_match" if title.startswith("S") else "loglik" for title in RUNS}
CONTROL, HARD, RANK = "domains_v2", "domains_v2_hard", "domains_v2_rank64"
N_BOOT = 2000
SEP = "ppl separate-attn"
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


def _rows(res: dict, row: str, task: str) -> np.ndarray:
    """A row's per-example (n_tokens, n_correct, loglik_sum) on one task."""
    return np.asarray(res["examples"][row][task], dtype=float)


def _ci(values: np.ndarray, spec: str = "+.3f") -> str:
    low, high = np.quantile(values, [0.025, 0.975])
    return f"[{low:{spec}}, {high:{spec}}]"


def gains_and_kept(res: dict, task: str, idx: np.ndarray | None = None) -> tuple:
    """The own-domain expert's gain over the base and the share of it dense TIES keeps, on
    log-likelihood per token; ``idx`` (R, n) resamples the passages (one value per resample)."""

    def ll(row: str) -> np.ndarray:
        rows = _rows(res, row, task)
        return metric_of_rows(rows if idx is None else rows[idx], "loglik")

    base = ll("base")
    gain = ll(f"expert {task}") - base
    return gain, (ll("dense ties") - base) / gain


def _kept(point: float, gain: float, boot: np.ndarray, spec: str = ".2f") -> str:
    """A kept share and its interval, or why there is none (no gain to keep)."""
    return f"{point:{spec}} {_ci(boot, spec)}" if gain > 0 else "– (no gain)"


def against_control(control: Path, treated: Path, name: str) -> list[str]:
    """A session-48 pool (``name``: DH or DR) against D2 on the same passages: H1-H4."""
    paths = [control / "moe_results.json", treated / "moe_results.json"]
    if not all(p.is_file() for p in paths):
        return [f"## {name} against D2", "", "Not both run.", ""]
    c, h = (json.loads(p.read_text()) for p in paths)
    lines = [f"## {name} against D2 (the same TEST passages, paired)", ""]
    for task in c["tasks"]:
        if _rows(c, "base", task).tolist() != _rows(h, "base", task).tolist():
            return [*lines, f"The base's rows on {task} differ: not the same passages.", ""]
    rng = np.random.default_rng(0)
    lines += [f"| domain | gain D2 | gain {name} | {name} − D2 | TIES keeps D2 | TIES keeps {name} "
              f"| {name} − D2 |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in c["tasks"]:
        n = len(_rows(c, "base", task))
        idx = rng.integers(0, n, size=(N_BOOT, n))
        (gc, kc), (gh, kh) = gains_and_kept(c, task), gains_and_kept(h, task)
        (bgc, bkc), (bgh, bkh) = gains_and_kept(c, task, idx), gains_and_kept(h, task, idx)
        both = gc > 0 and gh > 0
        lines.append(
            f"| {task} | {gc:+.3f} {_ci(bgc)} | {gh:+.3f} {_ci(bgh)} | {gh - gc:+.3f} "
            f"{_ci(bgh - bgc)} | {_kept(kc, gc, bkc)} | {_kept(kh, gh, bkh)} | "
            + (f"{kh - kc:+.2f} {_ci(bkh - bkc, '+.2f')} |" if both else "– |")
        )
    lines += ["", "Gains are nats a token over the base on the expert's own domain; \"TIES keeps\" is "
              "(dense TIES − base) / (expert − base) there, shown where the expert gains.", ""]  # fmt: skip
    for label, res in (("D2", c), (name, h)):
        overall, per = routing_share(res["confusion"][SEP])
        each = ", ".join(f"{t} {v:.2f}" for t, v in per.items())
        claim = next(o for o in res["ordering"]
                     if o["claim"].startswith(f"{SEP} >") and o["metric"] == "loglik")  # fmt: skip
        cis = ", ".join(f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in claim["intervals"])
        lines.append(f"- {label}: separate attention routes **{overall:.3f}** right ({each}); "
                     f"{claim['claim']}: {claim['values']} -> {claim['verdict']}, intervals {cis}"
                     f" ({'every one above 0' if claim['significant'] else 'not every one above 0'})")  # fmt: skip
    return [*lines, ""]


def per_passage(folder: Path) -> list[str]:
    """How each expert's own-domain change over the base spreads over the passages (DH's code
    expert lost most of its mean on three passages)."""
    path = folder / "moe_results.json"
    if not path.is_file():
        return []
    res = json.loads(path.read_text())
    lines = [f"Per passage, {folder.name} (expert minus base, nats a token, own domain):", ""]
    for task in res["tasks"]:
        base, expert = _rows(res, "base", task), _rows(res, f"expert {task}", task)
        d = np.sort(expert[:, 2] / expert[:, 0] - base[:, 2] / base[:, 0])
        lines.append(f"- {task}: median {np.median(d):+.3f}, below the base on {int((d < 0).sum())}"
                     f" of {len(d)}, the three lowest {', '.join(f'{x:+.2f}' for x in d[:3])}")  # fmt: skip
    return [*lines, ""]


def main() -> None:
    out = ["# MergeME on SmolLM2-135M-Instruct (sessions 47-48)", ""]
    for title, folder in RUNS.items():
        out += study(title, folder)
    out += same_scores()
    for name, folder in (("DH", HARD), ("DR", RANK), ("D2s1", "domains_v2_seed1")):
        out += against_control(HERE / CONTROL, HERE / folder, name)
        out += per_passage(HERE / folder)
    print("\n".join(out))


if __name__ == "__main__":
    main()
