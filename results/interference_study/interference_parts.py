"""Where the other experts' task vectors take a merged expert's gain: by part of the model.

    python results/interference_study/interference_parts.py POOL [POOL ...] [--merges "ties d0.5" "task arith 0.5"]

For each pool (a built zoo folder, ``zoo-<fingerprint>``, or a SmolLM2 pool folder,
``smollm2-<fingerprint>``) and each plain merge of the regime's
judged forms, every expert's task is scored (TEST split, exact match) on:

- ``alone``: the merge's method and scaling applied to that expert's task vector alone (as the
  builder's "where ... loses the gains" line);
- ``merged``: the merge of all the experts (the regime table's row);
- ``+others in P``: ``alone`` with the tensors of part P taken from ``merged``, so the other
  experts' vectors act in P only;
- ``merged, P alone``: ``merged`` with the tensors of part P taken from ``alone``, so the other
  experts' vectors act everywhere but P.

The parts are the token embeddings, the output head (a part of its own where it is untied, as
in the zoo; with the embeddings where tied, as in SmolLM2), the attention projections, the MLP
and the norms. Task arithmetic and TIES act tensor by tensor (TIES trims each
tensor to its own density and elects signs per element), so each hybrid is exactly the merge
restricted to those tensors. Each figure is the share of the expert's gain over the base it
keeps: (score - base) / (expert - base). ``alone`` minus ``+others in P`` is what the other
vectors cost through P alone; ``merged, P alone`` minus ``merged`` what removing them from P
gives back. Scoring runs through the merge engine and the evaluator the builder uses.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from merge_env.pools.regime import make_scorer, own_vector_merge, regime_merges
from merge_env.pools.zoo import load_zoo
from merge_env.search.recipe import BASE

PARTS = {
    "embeddings": lambda n: "embed_tokens" in n,
    "head": lambda n: n.startswith("lm_head"),
    "attention": lambda n: ".self_attn." in n,
    "mlp": lambda n: ".mlp." in n,
    "norms": lambda n: "norm" in n,
}


def part_names(model: torch.nn.Module) -> dict[str, list[str]]:
    """Each part's parameter names (a tied head is the embeddings' parameter, listed once, so
    it has no part of its own); every parameter must fall in exactly one part."""
    names = [n for n, _ in model.named_parameters()]
    out = {part: [n for n in names if pred(n)] for part, pred in PARTS.items()}
    counted = sorted(n for ns in out.values() for n in ns)
    if counted != sorted(names):
        loose = sorted(set(names) - set(counted)) or sorted(
            {n for n in counted if counted.count(n) > 1}
        )
        raise SystemExit(f"parameters in no part or in two: {loose[:4]}")
    return {part: ns for part, ns in out.items() if ns}


def hybrid(keep: torch.nn.Module, take: torch.nn.Module, names: list[str]) -> torch.nn.Module:
    """A copy of ``keep`` with the parameters ``names`` from ``take``."""
    out = copy.deepcopy(keep)
    mine, source = dict(out.named_parameters()), dict(take.named_parameters())
    with torch.no_grad():
        for name in names:
            mine[name].copy_(source[name])
    return out


def load_pool(root: Path):
    """A zoo or a SmolLM2 pool, with its seed and the machine it was trained on."""
    if (root / "pool.json").is_file():
        from merge_env.pools.smollm2 import load_smollm2_pool

        pool = load_smollm2_pool(root)
        return pool, pool.config.seed, pool.built_on
    zoo = load_zoo(root)
    return zoo, zoo.config.seed if zoo.config else None, zoo.built_on


def study(root: Path, merges: list[str]) -> dict:
    zoo, seed, built_on = load_pool(root)
    sources = {BASE: zoo.base, **zoo.experts}
    pool, evaluator = make_scorer(sources, zoo.tokenizer_dir, "cpu")
    tasks = {t.name: t for t in zoo.tasks}

    def em(model, task: str) -> float:
        return evaluator.score_tasks(model, [tasks[task]], "test")[task].exact_match

    base = {t: em(pool.models[BASE], t) for t in zoo.experts}
    own = {t: em(pool.models[t], t) for t in zoo.experts}
    all_merges = regime_merges(list(zoo.experts))
    out = {"zoo": str(root), "seed": seed, "built_on": built_on, "base": base, "expert": own,
           "merges": {}}  # fmt: skip
    for row in merges:
        merged = pool.merged_model(all_merges[row])
        parts = part_names(merged)
        rows = {}
        for task in zoo.experts:
            gain = own[task] - base[task]

            def share(model, task=task, gain=gain) -> float:
                return (em(model, task) - base[task]) / gain

            alone = pool.merged_model(own_vector_merge(row, task))
            rec = {"alone": share(alone), "merged": share(merged)}
            for part, names in parts.items():
                rec[f"+others in {part}"] = share(hybrid(alone, merged, names))
                rec[f"merged, {part} alone"] = share(hybrid(merged, alone, names))
            rows[task] = rec
        out["merges"][row] = rows
    return out


def render(result: dict) -> str:
    lines = [f"## zoo seed {result['seed']} ({result['zoo']})", ""]
    for row, by_task in result["merges"].items():
        tasks = list(by_task)
        lines += [f"### {row}: share of each expert's gain kept", "",
                  "| | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]  # fmt: skip
        for key in by_task[tasks[0]]:
            cells = " | ".join(f"{by_task[t][key]:.2f}" for t in tasks)
            lines.append(f"| {key} | {cells} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pools", nargs="+", type=Path)
    parser.add_argument("--merges", nargs="+", default=["ties d0.5", "task arith 0.5"])
    parser.add_argument("--json", type=Path, help="write every figure here as well")
    args = parser.parse_args()
    run_pools(args.pools, lambda root: study(root, args.merges), render, args.json)


def run_pools(pools, study_one, render_one, json_path: Path | None) -> None:
    """Study each pool, print its tables, and rewrite ``json_path`` after each one (a kill keeps
    what finished)."""
    results = []
    for root in pools:
        result = study_one(root)
        print(render_one(result), flush=True)
        results.append(result)
        if json_path:
            json_path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
