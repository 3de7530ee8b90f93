"""Score a batch of recipes with MergeGym as it was at an earlier commit, for ``bench_eval``.

``python -m experiments.bench_eval --candidates --legacy COMMIT`` checks COMMIT out into a
temporary git worktree and runs this file there, in a child process whose ``merge_env`` is that
commit's: the scorer, the merge engine and the merged-model LRU of the day, nothing of today's.
The child gets one pickled job (the pool's sources, the tokenizer folder, the tasks, the recipes
as dicts, the evaluator's batch size and example cap, the torch threads) and writes back, per
recipe, {task: (exact match, token accuracy, loglik)} and the seconds the batch took.

It scores the way the local back-end scored then: each recipe assembled and scored alone, in
order, after one untimed warm-up pass over the batch (tokenising, first merges), as
``bench_eval`` warms today's scorers. It imports only the standard library, torch, transformers
and the worktree's own ``merge_env``, whose API for these calls (``ModelPool(sources)``,
``assemble``, ``Evaluator(tokenizer, batch_size=, max_examples=)``, ``score_tasks``,
``Recipe.from_dict``) is unchanged since the first commits.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def run_legacy(commit: str, job: dict[str, Any], repo: Path) -> dict[str, Any]:
    """Score ``job`` with MergeGym at ``commit`` (a worktree of ``repo``, removed afterwards)."""
    with tempfile.TemporaryDirectory(prefix="mergegym-legacy-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), commit],
                       check=True, capture_output=True)  # fmt: skip
        try:
            return run_in_tree(tree, job)
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)],
                           check=False, capture_output=True)  # fmt: skip


def run_in_tree(tree: Path, job: dict[str, Any]) -> dict[str, Any]:
    """Score ``job`` in a child process whose ``merge_env`` is the one under ``tree``."""
    with tempfile.TemporaryDirectory(prefix="mergegym-legacy-job-") as tmp:
        job_file, out_file = Path(tmp) / "job.pkl", Path(tmp) / "out.pkl"
        job_file.write_bytes(pickle.dumps(job))
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run([sys.executable, str(Path(__file__).resolve()), str(job_file),
                        str(out_file)], check=True, cwd=tree, env=env)  # fmt: skip
        return pickle.loads(out_file.read_bytes())


def _child(job_file: str, out_file: str) -> None:
    import torch
    from transformers import AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator
    from merge_env.search.assemble import ModelPool
    from merge_env.search.recipe import Recipe

    job = pickle.loads(Path(job_file).read_bytes())
    torch.set_num_threads(job["threads"])
    pool = ModelPool(job["sources"], device=job["device"])
    tok = AutoTokenizer.from_pretrained(job["tokenizer_dir"])
    recipes = [Recipe.from_dict(d) for d in job["recipes"]]
    tasks = job["tasks"]

    def evaluator() -> Any:
        return Evaluator(tok, device=job["device"], batch_size=job["batch_size"],
                         max_examples=job["max_examples"])  # fmt: skip

    def score_all() -> list[dict[str, tuple[float, float, float]]]:
        ev = evaluator()
        return [{name: (s.exact_match, s.token_accuracy, s.loglik)
                 for name, s in ev.score_tasks(pool.assemble(r), tasks).items()}
                for r in recipes]  # fmt: skip

    with torch.no_grad():
        score_all()  # warm-up, as bench_eval's
        built = pool.merges_built
        seconds = []
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            scores = score_all()
            seconds.append(time.perf_counter() - start)
    out = dict(scores=scores, seconds=seconds, merges_built=pool.merges_built - built,
               merged_cache_size=pool.merged_cache_size)  # fmt: skip
    Path(out_file).write_bytes(pickle.dumps(out))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2])
