"""Benchmark teacher-forced scoring: examples/s, and the cost over a bare forward pass.

    python -m experiments.bench_eval                      # random 6-layer width-128 char Llama
    python -m experiments.bench_eval --model DIR --n 512 --batch-size 64 --device cuda
    python -m experiments.bench_eval --pool smollm2 --n 32   # SmolLM2-135M, chat-templated tasks
    python -m experiments.bench_eval --candidates            # candidates/min, prefix sharing off/on
    python -m experiments.bench_eval --candidates --pool tiny --repeats 3
    python -m experiments.bench_eval --candidates --pool smollm2 --repeats 1 --threads 2
    python -m experiments.bench_eval --job 12 --pool smollm2   # the main job's peak RSS
    python -m experiments.bench_eval --merges 4 --pool smollm2 --threads 1   # s per merge

The bare forward runs the model over exactly the padded batches the evaluator builds, so the ratio
(scoring time / forward time) is what the scoring loop adds: encoding, gathering answer positions,
log-softmax over them, metrics. With a model that takes ``logits_to_keep`` the scorer can even be
faster than the bare forward, since it skips the LM head on prompt positions.

``--candidates`` scores whole batches of recipes on a pool (``zoo``: the default zoo, built into
the cache on first use; ``tiny``: seconds; ``smollm2``: the SmolLM2-135M pool, built by
``python -m experiments.build_zoo --pool smollm2`` or on first use) the way the local back-end
does, with four scorers: ``issue`` (the scorer as issue 18 found it: each recipe assembled and
scored alone through the model's own forward, the LM head from the earliest answer position on),
``off`` (alone, the head on answer positions only), ``path`` (``ModelPool.score_recipes``: shared
path prefixes run once) and ``on`` (path prefixes, and the prompt tokens every row of an example
batch shares, e.g. a chat template's system turn, run once). It prints candidates per minute,
the speed-ups, the path-prefix hit rate (the fraction of slot forwards reused), the share of
token positions prompt sharing skips, and whether every scorer's scores came out identical. Batches: a PPO-like vector step (8 episodes,
each a few random edits of the identity path under one merge) and CMA-ES-like generations drawn
around the identity genome (``level=arch``: one merge; ``level=both``: a merge per candidate).
It ends with the process's memory: peak RSS next to the pool's weights, the merged-model LRU and
the prefix LRU.

``--job N`` runs the main job's scoring on a pool (``experiments.run``'s problem from the same
config: references, an N-evaluation CMA-ES search by default, the front and the references on
the test split) and prints its wall time and peak RSS with the shares of the pool's weights,
the merged-model LRU and the prefix LRU (issue 18's target: peak <= 2.5x the weights).
"""

from __future__ import annotations

import argparse
import math
import resource
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.tasks.synthetic import V5_ZOO_TASKS, char_tokenizer, make_task
from merge_env.search.assemble import load_causal_lm
from merge_env.search.recipe import MERGED, Recipe, Slot, uniform_merge


def random_llama(device: torch.device, seed: int) -> tuple[Any, Any]:
    """Return (model, tokenizer): a random 6-layer, width-128 Llama with the char tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device).eval(), tok


def load_model(path: str, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """Return (model, tokenizer) from an HF model directory."""
    from transformers import AutoTokenizer

    model = load_causal_lm(path, dtype or torch.float32)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Return the wall time of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def ppo_like_batch(
    experts: Sequence[str], depth: int, n: int, edits: int, seed: int
) -> list[Recipe]:
    """``n`` episodes under one merge: each the identity path with ``edits`` random slot edits
    (another source, another scale, a layer repeated or dropped), as PPO's envs emit them."""
    rng = np.random.default_rng(seed)
    merge = uniform_merge("dare_ties", experts, density=0.5)
    sources, scales = [MERGED, "base", *experts], (0.5, 0.75, 1.25, 1.5)
    out = []
    for _ in range(n):
        path = [Slot(MERGED, t) for t in range(depth)]
        for _ in range(edits):
            t, kind = int(rng.integers(len(path))), int(rng.integers(4))
            if kind == 0:
                path[t] = Slot(str(rng.choice(sources)), path[t].layer, path[t].scale)
            elif kind == 1:
                path[t] = Slot(path[t].source, path[t].layer, float(rng.choice(scales)))
            elif kind == 2:
                path.insert(t, path[t])
            elif len(path) > 1:
                path.pop(t)
        out.append(Recipe(merge=merge, path=tuple(path)))
    return out


def cmaes_like_generation(pool: Any, level: str, seed: int) -> list[Recipe]:
    """One CMA-ES generation around the identity genome (aligned paths), at CMA-ES's default
    population size and the agent's default step size."""
    from agents.genome import Genome

    genome = Genome(pool, level=level, encoding="aligned")
    rng = np.random.default_rng(seed)
    popsize = 4 + int(3 * math.log(genome.dim))
    x = genome.identity() + (1.0 / 6.0) * rng.standard_normal((popsize, genome.dim))
    return [genome.decode(row) for row in x]


def pool_spec(name: str, seed: int) -> Any:
    """The PoolSpec behind ``--pool`` (zoo, tiny or smollm2; built into the cache on first use)."""
    if name == "smollm2":
        from merge_env.pools.smollm2 import POOL_V4, smollm2_pool

        # pool v4, the one docs/throughput.md measured (the default is v5-L since session 42;
        # its experts have the same shapes, so a merge or a forward costs the same)
        return smollm2_pool(seed=seed, **POOL_V4)
    from merge_env.pools.spec import zoo_pool

    return zoo_pool("tiny" if name == "tiny" else "default", seed=seed)


def peak_rss() -> int:
    """This process's peak resident set size in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def memory_line(pool: Any, prefix_bytes: int) -> str:
    """Peak RSS next to the pool's weights, the merged-model LRU and the prefix LRU."""
    peak, weights = peak_rss(), pool.weight_bytes
    return (f"peak RSS {_size(peak)} = {peak / weights:.2f}x the pool's weights "
            f"{_size(weights)}; merged-model LRU {_size(pool.merged_bytes)} (room for "
            f"{pool.merged_cache_size} merges); prefix LRU {_size(prefix_bytes)}")  # fmt: skip


def candidates_main(args: argparse.Namespace) -> None:
    """Candidates per minute: the scorer as issue 18 found it, without sharing, with path-prefix
    sharing, and with path- and prompt-prefix sharing, over a pool's tasks."""
    from transformers import AutoTokenizer

    from merge_env.search.assemble import ModelPool

    spec = pool_spec(args.pool or "zoo", args.seed)
    pool = ModelPool(spec.sources, device=args.device)
    tok = AutoTokenizer.from_pretrained(str(spec.tokenizer_dir))
    tasks = list(spec.tasks)
    seed = args.seed if args.batch_seed is None else args.batch_seed
    batches = {
        "ppo step (8 episodes)": ppo_like_batch(pool.experts, pool.num_layers, 8, args.edits,
                                                seed),
        "cmaes generation, level=arch": cmaes_like_generation(pool, "arch", seed),
        "cmaes generation, level=both": cmaes_like_generation(pool, "both", seed),
    }  # fmt: skip
    if args.only:
        batches = {k: v for k, v in batches.items() if any(w in k for w in args.only.split(","))}
    n_ex = sum(min(len(t.search), args.max_examples or len(t.search)) for t in tasks)
    probe = Evaluator(tok, batch_size=args.batch_size, max_examples=args.max_examples)
    print(f"device {args.device}  threads {torch.get_num_threads()}  pool {spec.name} "
          f"({pool.num_layers} layers, {len(pool.names)} sources)  examples {n_ex}  "
          f"prompt tokens shared {prompt_share(probe, tasks):.1%}")  # fmt: skip
    print("c/min: issue = the scorer as issue 18 found it (the model's forward, head from the "
          "earliest answer on), off = no sharing, path = path prefixes shared, on = path and "
          "prompt prefixes shared")  # fmt: skip
    print(
        "identical: every score of path and on equals off's bit for bit; issue: whether its "
        "exact match and token accuracy equal off's, and its largest loglik difference"
    )
    print(f"{'batch':30}{'n':>4}{'issue':>8}{'off':>8}{'path':>8}{'on':>8}{'on/issue':>10}"
          f"{'on/off':>8}{'hit rate':>10}{'identical':>11}{'issue':>7}{'|dll|':>9}")  # fmt: skip
    prefix_bytes, legacy = 0, []
    for label, recipes in batches.items():
        row = sharing_row(pool, tok, tasks, recipes, args)
        prefix_bytes = max(prefix_bytes, row["prefix_bytes"])
        print(f"{label:30}{len(recipes):4d}{row['issue']:8.1f}{row['off']:8.1f}{row['path']:8.1f}"
              f"{row['on']:8.1f}{row['on'] / row['issue']:9.2f}x{row['on'] / row['off']:7.2f}x"
              f"{row['hit_rate']:10.1%}{row['identical']!s:>11}{row['issue_same']!s:>7}"
              f"{row['issue_dll']:9.1e}")  # fmt: skip
        if args.legacy:
            legacy.append((label, recipes, row))
    print(memory_line(pool, prefix_bytes))
    for label, recipes, row in legacy:
        then = legacy_row(spec, tasks, recipes, row, args)
        print(f"{label:30} at {args.legacy}: {then['c_min']:.1f} c/min (merges built "
              f"{then['merges_built']}, merged-model LRU {then['lru']}); on / then "
              f"{row['on'] / then['c_min']:.2f}x; exact match and token accuracy equal to off's: "
              f"{then['same']}, largest loglik difference {then['dll']:.1e}")  # fmt: skip


def legacy_row(
    spec: Any, tasks: list, recipes: list[Recipe], row: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The batch scored by MergeGym at commit ``args.legacy`` (``experiments/bench/legacy.py``):
    its candidates per minute (best of ``repeats``), its merges built per pass, and how its scores
    compare with today's ``off`` scorer (exact match and token accuracy equal; largest loglik
    difference)."""
    import dataclasses

    from experiments.bench.legacy import run_legacy

    job = dict(sources={k: str(v) for k, v in spec.sources.items()},
               tokenizer_dir=str(spec.tokenizer_dir), device=args.device,
               tasks=[dataclasses.replace(t, scorer=None) for t in tasks],
               recipes=[r.to_dict() for r in recipes], batch_size=args.batch_size,
               max_examples=args.max_examples, threads=torch.get_num_threads(),
               repeats=args.repeats)  # fmt: skip
    out = run_legacy(args.legacy, job, Path(__file__).resolve().parents[2])
    same, dll = agreement(out["scores"], row["expected"])
    return dict(c_min=60.0 * len(recipes) / min(out["seconds"]), same=same, dll=dll,
                merges_built=out["merges_built"], lru=out["merged_cache_size"])  # fmt: skip


def merges_main(args: argparse.Namespace) -> None:
    """Seconds per parameter merge of a CMA-ES generation (``level=both``: a DARE-TIES merge per
    candidate), with DARE's draws drawn every time and kept (``merging/sparsify.py``)."""
    from merge_env.merging.sparsify import DARE_DRAWS
    from merge_env.search.assemble import ModelPool

    spec = pool_spec(args.pool or "zoo", args.seed)
    pool = ModelPool(spec.sources, device=args.device)
    merges: dict[str, Any] = {}
    for recipe in cmaes_like_generation(pool, "both", args.seed):
        merges.setdefault(Recipe(merge=recipe.merge).canonical_json(), recipe.merge)
    chosen = list(merges.values())[: args.merges]
    print(f"pool {spec.name}  threads {torch.get_num_threads()}  {len(chosen)} distinct merges "
          f"of one generation ({chosen[0].merge_method})")  # fmt: skip
    kept_bytes, last = DARE_DRAWS.max_bytes, []
    try:
        for label, size in (("draws off", 0), ("draws kept", kept_bytes)):
            DARE_DRAWS.clear()
            DARE_DRAWS.max_bytes = size
            times = []
            for merge in chosen:
                pool._merged.clear()  # built afresh, not found in the merged-model LRU
                times.append(timed(partial(pool.merged_model, merge), torch.device(args.device)))
            last.append(pool.merged_model(chosen[-1]).state_dict())
            print(
                f"{label:12}"
                + " ".join(f"{t:6.1f}" for t in times)
                + f"   mean {np.mean(times):.1f} s"
            )
    finally:
        DARE_DRAWS.max_bytes = kept_bytes
    same = all(torch.equal(last[0][k], last[1][k]) for k in last[0])
    print(f"last merge's tensors identical: {same}")


def prompt_share(ev: Evaluator, tasks: list) -> float:
    """The share of the search split's padded token positions that prompt-prefix sharing skips."""
    encoded = [e for t in tasks for e in ev._encoded_split(t, "search")]
    total = skipped = 0
    for idx, inputs, _ in ev._batches(encoded):
        total += inputs.numel()
        skipped += ev.shared_prompt([encoded[i] for i in idx]) * inputs.shape[0]
    return skipped / total if total else 0.0


# the scorers a --candidates row compares: (prefix cache on, prompt prefix on, head on answers)
SCORERS = {
    "issue": (False, False, False),
    "off": (False, False, True),
    "path": (True, False, True),
    "on": (True, True, True),
}


def sharing_row(
    pool: Any, tok: Any, tasks: list, recipes: list[Recipe], args: argparse.Namespace
) -> dict[str, Any]:
    """Best-of-``repeats`` candidates/minute per scorer (``SCORERS``; a fresh prefix cache each
    time, so only sharing within the batch counts), the path-prefix hit rate, whether the sharing
    scorers' scores equal ``off``'s bit for bit, and how the ``issue`` scorer's differ (the head
    over other rows may round the logits differently: exact match and token accuracy compared,
    the largest loglik difference)."""
    device = torch.device(args.device)
    kw = dict(device=device, batch_size=args.batch_size, max_examples=args.max_examples)

    def evaluator(name: str) -> Evaluator:
        path, prompt, head = SCORERS[name]
        ev = Evaluator(tok, prefix_cache_bytes=args.prefix_cache_bytes if path else 0,
                       prompt_prefix=prompt, **kw)  # fmt: skip
        ev.head_on_answers = head
        return ev

    expected = pool.score_recipes(recipes, evaluator("off"), tasks)  # warm-up: merges, encoding
    runs: dict[str, list[float]] = {name: [] for name in SCORERS}
    identical, hit_rate, held, issue_same, issue_dll = True, 0.0, 0, True, 0.0
    for _ in range(args.repeats):
        for name in SCORERS:
            ev, got = evaluator(name), []
            runs[name].append(
                timed(partial(_extend, got, pool.score_recipes, recipes, ev, tasks), device)
            )
            if name == "issue":
                same, dll = agreement(
                    [{t: (s.exact_match, s.token_accuracy, s.loglik) for t, s in have.items()}
                     for have in got], expected)  # fmt: skip
                issue_same, issue_dll = issue_same and same, max(issue_dll, dll)
            else:
                identical &= got == expected
            if name == "on":
                hit_rate = ev.prefix_cache.stats.hit_rate
                held = max(held, ev.prefix_cache.bytes)
    per_min = 60.0 * len(recipes)
    out: dict[str, Any] = {name: per_min / min(t) for name, t in runs.items()}
    out.update(hit_rate=hit_rate, identical=identical, prefix_bytes=held, issue_same=issue_same,
               issue_dll=issue_dll, expected=expected)  # fmt: skip
    return out


def agreement(
    got: Sequence[dict[str, tuple[float, float, float]]], want: Sequence[dict[str, Any]]
) -> tuple[bool, float]:
    """Whether every recipe's {task: (exact match, token accuracy, loglik)} in ``got`` has the
    exact match and token accuracy of its scores in ``want``, and the largest loglik difference."""
    same, dll = True, 0.0
    for have, scores in zip(got, want):
        for task, (em, acc, ll) in have.items():
            w = scores[task]
            same &= (em, acc) == (w.exact_match, w.token_accuracy)
            dll = max(dll, abs(ll - w.loglik))
    return same, dll


def _extend(out: list, fn: Callable[..., list], *args: Any) -> None:
    out.extend(fn(*args))


def job_main(args: argparse.Namespace) -> None:
    """The main job's scoring phases on ``--pool``: wall time and peak RSS with their shares."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from experiments import report
    from experiments.cli import CONF_DIR
    from experiments.config_check import validate_run_config
    from experiments.run import make_problem

    run_dir = Path(tempfile.mkdtemp(prefix="bench-job-"))
    # pool v4 for smollm2, as pool_spec: the pool docs/throughput.md measured
    pool = "smollm2_v4" if args.pool == "smollm2" else args.pool or "zoo"
    overrides = [f"pool={pool}", f"agent={args.agent}", f"budget={args.job}",
                 "logger=none", "run_name=bench", f"run_dir={run_dir}", f"seed={args.seed}",
                 f"device={args.device}"]  # fmt: skip
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    validate_run_config(cfg)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    problem = make_problem(cfg, run_dir)
    loaded = time.perf_counter()
    problem.references()
    agent = instantiate(cfg.agent)
    agent.workdir = run_dir / "agent"
    agent.search(problem, cfg.budget)
    searched = time.perf_counter()
    report.test_scores(problem, problem.archive.front())
    report.reference_test_scores(problem)
    done = time.perf_counter()
    prefix = problem.evaluator.prefix_cache
    print(f"pool {args.pool or 'zoo'} ({problem.pool.num_layers} layers, "
          f"{len(problem.pool.names)} sources)  agent {args.agent}  budget {args.job}  "
          f"threads {torch.get_num_threads()}  run folder {run_dir}")  # fmt: skip
    print(f"wall {done - start:.1f} s: load {loaded - start:.1f}, references + search "
          f"{searched - loaded:.1f}, test scores {done - searched:.1f}; evaluations "
          f"{problem.spent:.1f}, merges built {problem.pool.merges_built}")  # fmt: skip
    print(memory_line(problem.pool, 0 if prefix is None else prefix.bytes))


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark and print a result table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF causal-LM directory (default: random char Llama)")
    parser.add_argument(
        "--pool",
        choices=["smollm2", "zoo", "tiny"],
        help="smollm2: the SmolLM2-135M-Instruct pool (--candidates, --job), or alone its "
        "converted base on chat-templated zoo tasks; zoo / tiny: the zoo presets (--candidates, "
        "--job; default zoo)",
    )
    parser.add_argument(
        "--job",
        type=int,
        default=None,
        metavar="N",
        help="the main job's scoring with an N-evaluation search: peak RSS",
    )
    parser.add_argument("--agent", default="cmaes", help="--job: the agent config group")
    parser.add_argument(
        "--candidates",
        action="store_true",
        help="candidates/minute of recipe batches with prefix sharing off and on",
    )
    parser.add_argument("--edits", type=int, default=3, help="--candidates: edits per episode")
    parser.add_argument("--merges", type=int, default=None, metavar="N",
                        help="seconds per merge of N distinct merges of a CMA-ES generation, "
                        "DARE draws off and kept")  # fmt: skip
    parser.add_argument("--only", default=None,
                        help="--candidates: the batches whose label has one of these "
                        "comma-separated words (ppo, arch, both)")  # fmt: skip
    parser.add_argument("--batch-seed", type=int, default=None,
                        help="--candidates: the seed the batches are drawn with (default "
                        "--seed, which also picks the pool)")  # fmt: skip
    parser.add_argument("--max-examples", type=int, default=None, help="--candidates: per task")
    parser.add_argument("--legacy", default=None, metavar="COMMIT",
                        help="--candidates: also score each batch with MergeGym at COMMIT (a git "
                        "worktree; e.g. 86b6e4e, the code issue 18 was filed against)")  # fmt: skip
    parser.add_argument("--prefix-cache-bytes", type=int, default=256 * 2**20)
    # the tasks docs/throughput.md's figures were measured on (zoo v5's), so they rerun as printed
    parser.add_argument("--tasks", default=",".join(V5_ZOO_TASKS), help="zoo task kinds")
    parser.add_argument("--n", type=int, default=512, help="examples per task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: its)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.job is not None:
        job_main(args)
        return
    if args.candidates:
        candidates_main(args)
        return
    if args.merges:
        merges_main(args)
        return
    if args.pool in ("zoo", "tiny"):
        parser.error("--pool zoo/tiny is for --candidates or --job")

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.pool == "smollm2":
        from merge_env.pools.gguf import converted_base
        from merge_env.pools.smollm2 import chat_tasks

        args.model = str(converted_base())
        model, tok = load_model(args.model, device, dtype)
        tasks = chat_tasks(tok, args.tasks.split(","), args.n, 0, args.seed)
    else:
        if args.model:
            model, tok = load_model(args.model, device, dtype)
        else:
            model, tok = random_llama(device, args.seed)
            if dtype is not None:
                model = model.to(dtype)
        tasks = [make_task(kind, args.n, 0, args.seed) for kind in args.tasks.split(",")]
    n_examples = sum(len(t.search) for t in tasks)

    cold_ev = Evaluator(tok, device=device, batch_size=args.batch_size)
    cold = timed(lambda: cold_ev.score_tasks(model, tasks), device)  # tokenising, warm-up
    ev = Evaluator(tok, device=device, batch_size=args.batch_size)
    batches = [(i.to(device), m.to(device)) for i, m in ev.padded_batches(tasks)]

    def bare_forward() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches:
                model(input_ids=input_ids, attention_mask=mask, use_cache=False)

    vocab = len(tok)

    class NoModel(torch.nn.Module):
        """Zero logits at no cost: what is left of a score is the scoring loop itself."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, vocab, device=input_ids.device)

    # Interleaved, best of n: on a shared machine the minimum is the least disturbed run.
    bare_runs, warm_runs, loop_runs = [], [], []
    for _ in range(args.repeats):
        bare_runs.append(timed(bare_forward, device))
        warm_runs.append(timed(lambda: ev.score_tasks(model, tasks), device))
        loop_runs.append(timed(lambda: ev.score_tasks(NoModel(), tasks), device))
    bare, warm, loop = min(bare_runs), min(warm_runs), min(loop_runs)
    tokens = sum(int(m.sum()) for _, m in batches)
    padded = sum(m.numel() for _, m in batches)

    print(f"device {device}  threads {torch.get_num_threads()}  model {args.model or 'random'}")
    print(f"tasks {args.tasks}  examples {n_examples}  batches {len(batches)}  ", end="")
    print(f"tokens {tokens} (padded {padded}, {padded / tokens - 1:.1%} padding)")
    print(f"{'':24}{'seconds':>10}{'examples/s':>12}{'x forward':>11}")
    for label, secs in [
        ("bare forward", bare),
        ("score (warm)", warm),
        ("score (cold: first call)", cold),
        ("scoring loop alone", loop),
    ]:
        print(f"{label:24}{secs:10.3f}{n_examples / secs:12.0f}{secs / bare:11.2f}")


if __name__ == "__main__":
    main()
