"""A plain merge with one λ for the attention projections (or the MLP) and another for the rest,
chosen on the SEARCH split, against the same merge with one λ for every tensor.

    python results/interference_study/module_lambda.py POOL [POOL ...] [--part mlp] [--json OUT]

For each pool and each ``LAMBDA_GRIDS`` family (TIES d0.5, task arithmetic), every pair
(λ_part, λ_rest) of the family's grid is scored on the SEARCH split (mean exact match over the
tasks): the merge at λ_rest with the part's tensors (``--part``: attention, q k v o, the default;
or mlp, gate up down) taken from the merge at λ_part (both merges act tensor by tensor, so this
is exactly the merge with two scalings).
The pair with the best mean is judged on the TEST split, as the builder judges its "(val)" rows,
against the best single λ (the grid's diagonal, the builder's row; ties go to the diagonal).
Prints, per pool and family: the chosen λs, the search means, and each expert's kept share of
its gain on TEST with the worst one. One more degree of freedom, chosen on the same split by the
same rule: a lead for a per-module search space, not a regime verdict (the regime is judged by
plain merges at the weights their papers use).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from merge_env.pools.regime import LAMBDA_GRIDS, make_scorer, scaled_merge
from merge_env.search.recipe import BASE

# the sibling script's helpers (run as a script, this folder is first on sys.path)
_parts = importlib.import_module("interference_parts")
load_pool, run_pools = _parts.load_pool, _parts.run_pools


PARTS = {"attention": ".self_attn.", "mlp": ".mlp."}  # part -> what its parameter names contain


def with_part(rest: torch.nn.Module, other: torch.nn.Module, part: str) -> torch.nn.Module:
    """A copy of ``rest`` with ``part``'s parameters from ``other``."""
    out = copy.deepcopy(rest)
    mine, source = dict(out.named_parameters()), dict(other.named_parameters())
    names = [n for n in mine if PARTS[part] in n]
    if not names:
        raise SystemExit(f"no {part} parameter ({PARTS[part]!r} in its name) in the model")
    with torch.no_grad():
        for name in names:
            mine[name].copy_(source[name])
    return out


def study(root: Path, part: str) -> dict:
    pool_obj, seed, built_on = load_pool(root)
    experts = list(pool_obj.experts)
    sources = {BASE: pool_obj.base, **pool_obj.experts}
    pool, evaluator = make_scorer(sources, pool_obj.tokenizer_dir, "cpu")
    tasks = pool_obj.tasks

    def em(model, split: str) -> dict[str, float]:
        return {t: s.exact_match for t, s in evaluator.score_tasks(model, tasks, split).items()}

    base, own = em(pool.models[BASE], "test"), {t: em(pool.models[t], "test")[t] for t in experts}

    def shares(test: dict[str, float]) -> dict[str, float]:
        return {t: (test[t] - base[t]) / (own[t] - base[t]) for t in experts}

    out = {"zoo": str(root), "seed": seed, "built_on": built_on, "part": part, "families": {}}
    for family, grid in LAMBDA_GRIDS.items():
        models = {lam: pool.merged_model(scaled_merge(family, experts, lam)) for lam in grid}
        pairs = [(lam, lam) for lam in grid] + [(a, r) for a in grid for r in grid if a != r]
        search = {}
        for a, r in pairs:
            model = models[r] if a == r else with_part(models[r], models[a], part)
            val = em(model, "search")
            search[(a, r)] = sum(val.values()) / len(val)
        diag = max(((lam, lam) for lam in grid), key=search.__getitem__)
        best = max(pairs, key=search.__getitem__)  # the diagonal first: ties go to it
        rec = {}
        for name, (a, r) in (("one λ", diag), ("two λs", best)):
            model = models[r] if a == r else with_part(models[r], models[a], part)
            kept = shares(em(model, "test"))
            rec[name] = {"lambda_part": a, "lambda_rest": r, "search_mean": search[(a, r)],
                         "kept": kept, "worst": min(kept.values())}  # fmt: skip
        out["families"][family] = rec
    return out


def render(result: dict) -> str:
    lines = [f"## zoo seed {result['seed']} ({result['zoo']})", "",
             f"| family | λ {result['part']} / rest | SEARCH mean EM | TEST kept shares | worst |",
             "|---|---|---|---|---|"]  # fmt: skip
    for family, rec in result["families"].items():
        for name, r in rec.items():
            kept = " / ".join(f"{v:.2f}" for v in r["kept"].values())
            lines.append(f"| {family}, {name} | {r['lambda_part']:g} / {r['lambda_rest']:g} "
                         f"| {r['search_mean']:.3f} | {kept} | {r['worst']:.2f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pools", nargs="+", type=Path)
    parser.add_argument("--part", choices=sorted(PARTS), default="attention")
    parser.add_argument("--json", type=Path, help="write every figure here as well")
    args = parser.parse_args()
    run_pools(args.pools, lambda root: study(root, args.part), render, args.json)


if __name__ == "__main__":
    main()
