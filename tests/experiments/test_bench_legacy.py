"""bench_eval --legacy's child: a batch scored by the merge_env of a given tree, in its own
process, gives exactly the scores this tree's scorer gives (here the tree is this one)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from experiments.bench.legacy import run_in_tree
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.assemble import ModelPool
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, param_merge


def test_child_scores_a_batch_as_this_tree_does(tiny_zoo):
    from transformers import AutoTokenizer

    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    experts = list(tiny_zoo.experts)
    merge = param_merge("dare_ties", {e: 0.5 for e in experts}, density=0.5)
    recipes = [
        Recipe(merge=merge, path=(Slot(MERGED, 0), Slot(MERGED, 1))),
        Recipe(merge=merge, path=(Slot(experts[0], 0, 1.25), Slot(MERGED, 1))),
        Recipe(merge=param_merge("ties", {e: 0.4 for e in experts}, density=0.5)),
    ]
    tasks = list(tiny_zoo.tasks)
    job = dict(sources={k: str(v) for k, v in sources.items()},
               tokenizer_dir=str(tiny_zoo.tokenizer_dir), device="cpu",
               tasks=[dataclasses.replace(t, scorer=None) for t in tasks],
               recipes=[r.to_dict() for r in recipes], batch_size=16, max_examples=8,
               threads=torch.get_num_threads(), repeats=2)  # fmt: skip
    out = run_in_tree(Path(__file__).resolve().parents[2], job)
    assert len(out["seconds"]) == 2 and out["merges_built"] == 0  # both merges kept (LRU)
    pool = ModelPool(sources)
    ev = Evaluator(AutoTokenizer.from_pretrained(str(tiny_zoo.tokenizer_dir)), batch_size=16,
                   max_examples=8)  # fmt: skip
    want = [{name: (s.exact_match, s.token_accuracy, s.loglik)
             for name, s in ev.score_tasks(pool.assemble(r), tasks).items()}
            for r in recipes]  # fmt: skip
    assert out["scores"] == want
