"""MergeME on a pool: every MoE variant beside the experts and dense merges, on the TEST split.

``python -m experiments.moe`` (default zoo, minutes) or ``pool=tiny`` (seconds). Rows: the base
and each expert alone, dense TIES/DARE merges, Mixtral MoEs with averaged / TIES / DARE shared
parameters, the token routers (hidden-state mean/last, embedding, random), perplexity routing with
merged and separate attention, and the heterogeneous MoE; then how often each Mixtral's token
routers pick the task's expert, the sequence routers' confusion matrices (task x chosen expert),
and whether the paper's orderings hold on the macro-averages. Routers and the heterogeneous
training read only the ``search`` split. The run folder keeps ``moe_results.json`` (every score,
the confusions, the ordering checks, the config) and ``moe_table.md``; ``run(cfg)`` returns the
best MoE's macro of the tasks' headline metric (exact match on the zoo; on ``pool=smollm2_domains``
the continuation's log-likelihood, which the per-task columns and the ordering checks use too;
token accuracy on a pool whose tasks' headline metrics differ).
"""

from __future__ import annotations

import gc
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from transformers import AutoTokenizer

from experiments.cli import hydra_entry
from experiments.stats import paired_macro_ci
from merge_env.errors import ConfigError
from merge_env.merging.plan import ParamMerge
from merge_env.methods.moe.hetero import build_hetero, train_hetero
from merge_env.methods.moe.mixtral import build_mixtral, merged_dense_model, shared_merge
from merge_env.methods.moe.ppl import ForcedExpert, ppl_moe_merged, ppl_moe_separate
from merge_env.methods.moe.routers import router_rows, token_routing_share
from merge_env.methods.moe.sequence import routing_confusion
from merge_env.pools.spec import PoolSpec
from merge_env.scoring.evaluate import Evaluator, ExampleScore, TaskScore, aggregate
from merge_env.search.assemble import load_causal_lm
from merge_env.search.recipe import BASE

log = logging.getLogger("mergegym.moe")
console = Console(width=None if sys.stdout.isatty() else 120)


class Bench:
    """One pool's experts, tasks and evaluator, and the score rows collected so far."""

    def __init__(self, cfg: DictConfig, pool: PoolSpec, work: Path) -> None:
        self.cfg, self.pool, self.work = cfg, pool, work
        self.tasks = list(pool.tasks)
        missing = [t.name for t in self.tasks if t.name not in pool.sources]
        if not self.tasks or missing:
            raise ConfigError(
                f"pool {pool.name!r}: MoE needs one expert per task (missing {missing})"
            )
        self.names = [t.name for t in self.tasks]
        # what each task's column shows: its headline metric (exact match on the zoo, the
        # continuation's log-likelihood on the domain pool)
        self.metric = {t.name: t.metric for t in self.tasks}
        self.metrics = list(dict.fromkeys([*self.metric.values(), "token_accuracy"]))
        self.base = Path(pool.sources[BASE])
        self.experts = {n: Path(pool.sources[n]) for n in self.names}
        self.tokenizer = AutoTokenizer.from_pretrained(pool.tokenizer_dir)
        self.ev = Evaluator(self.tokenizer, device=cfg.device, batch_size=cfg.batch_size,
                            max_examples=cfg.max_examples)  # fmt: skip
        self.rows: dict[str, dict[str, TaskScore]] = {}
        # per row and task, each example's (n_tokens, n_correct, loglik_sum): the claims' intervals
        self.examples: dict[str, dict[str, list[list[float]]]] = {}
        self.moe_rows: list[str] = []
        self.confusions: dict[str, dict[str, dict[str, int]]] = {}
        self._routers: dict[str, torch.Tensor] = {}
        self.token_share: dict[str, dict[str, float]] = {}

    def score(self, label: str, make: Callable[[], Any], moe: bool = True) -> Any:
        """Build a model, score it on every task, keep the row; returns the model."""
        model = make()
        self.record(label, self.ev.task_examples(model, self.tasks, split=self.cfg.split))
        if moe:
            self.moe_rows.append(label)
        return model

    def record(self, label: str, per_task: dict[str, list[ExampleScore]]) -> None:
        """Keep one row: its per-example results and their scores (``score_tasks``' bit for bit)."""
        self.examples[label] = {
            t: [[e.n_tokens, e.n_correct, e.loglik] for e in ex] for t, ex in per_task.items()
        }
        self.rows[label] = {t: aggregate(ex) for t, ex in per_task.items()}
        self.log_row(label)

    def log_row(self, label: str) -> None:
        """Log one row's per-task headline scores."""
        row = self.rows[label]
        log.info("%s: %s", label, {t: round(s.get(self.metric[t]), 3) for t, s in row.items()})

    def confusion(self, label: str, model: Any) -> None:
        """Routing confusion of a sequence-routed module on the table's split."""
        n = self.cfg.max_examples
        prompts = {t.name: [ex.prompt for ex in t.split(self.cfg.split)[:n]] for t in self.tasks}
        self.confusions[label] = routing_confusion(
            model, self.tokenizer, prompts, batch_size=self.cfg.batch_size
        )

    def load(self, path: Path) -> Any:
        """A dense or Mixtral checkpoint, ready to score."""
        model = load_causal_lm(path, torch.float32)
        return model.to(self.cfg.device).eval()

    def spec(self, group: str, entry: str) -> ParamMerge:
        """The merge ``cfg[group][entry]`` of the experts (on the base if the method needs one)."""
        node = self.cfg[group].get(entry)
        if node is None:
            raise ConfigError(
                f"moe config: {group}.{entry} is not defined (known: {list(self.cfg[group])})"
            )
        params = OmegaConf.to_container(node.get("parameters") or {}, resolve=True)
        paths = list(self.experts.values())
        return shared_merge(self.base, paths, node.method, params, seed=self.cfg.seed)  # type: ignore[arg-type]

    def mixtral(self, shared: str, router: str) -> Any:
        """Write and load the Mixtral with ``shared`` parameters and a ``router`` set from data."""
        cfg = self.cfg
        if router not in self._routers:
            prompts = [[ex.prompt for ex in t.search[: cfg.router_prompts]] for t in self.tasks]
            self._routers[router] = router_rows(
                router, list(self.experts.values()), prompts, self.tokenizer, seed=cfg.seed,
                scale=cfg.router_scale, device=cfg.device,
            )  # fmt: skip
        out = build_mixtral(
            self.base, self.experts, self.work / f"mixtral-{shared}-{router}",
            self._routers[router], shared=self.spec("shared", shared), top_k=cfg.top_k,
            overwrite=True, progress=False, metadata={"router": router},
        )  # fmt: skip
        return self.load(out)


def _singles(b: Bench) -> None:
    """Rows of the base, each expert alone, and the dense merges of ``cfg.dense``."""
    b.score("base", lambda: b.load(b.base), moe=False)
    for n, p in b.experts.items():
        b.score(f"expert {n}", lambda p=p: b.load(p), moe=False)
    for d in b.cfg.dense:
        make = lambda d=d: merged_dense_model(b.spec("dense", d), device=b.cfg.device)  # noqa: E731
        b.score(f"dense {d}", make, moe=False)


def _mixtrals(b: Bench) -> None:
    """Mixtral rows: each shared merge with ``cfg.router``, then each router with ``router_shared``."""
    cfg = b.cfg
    runs = [(s, cfg.router) for s in cfg.shared]
    runs += [(cfg.router_shared, r) for r in cfg.routers if r != cfg.router]
    n = cfg.max_examples
    prompts = [[ex.prompt for ex in t.split(cfg.split)[:n]] for t in b.tasks]
    for shared, router in runs:
        label = f"mixtral ({shared}, {router})"
        model = b.score(label, lambda s=shared, r=router: b.mixtral(s, r))
        share = token_routing_share(model, b.tokenizer, prompts, batch_size=cfg.batch_size)
        b.token_share[label] = dict(zip(b.names, share))


def _ppl(b: Bench) -> None:
    """Perplexity routing, merged then separate attention, with their routing confusions."""
    cfg = b.cfg
    kw = {"top_k": cfg.ppl.top_k, "temperature": cfg.ppl.temperature, "device": cfg.device}
    label = f"ppl merged-attn ({cfg.ppl.shared})"
    merged = b.score(
        label,
        lambda: ppl_moe_merged(b.base, b.experts, shared=b.spec("shared", cfg.ppl.shared), **kw),
    )
    b.confusion(label, merged)
    del merged
    separate = b.score("ppl separate-attn", lambda: ppl_moe_separate(b.experts, **kw))
    b.confusion("ppl separate-attn", separate)
    if cfg.keep_checkpoints:
        separate.save(b.work / "ppl-separate", tokenizer_dir=b.pool.tokenizer_dir, overwrite=True)
    del separate
    gc.collect()


def _oracle(b: Bench) -> None:
    """Oracle routing (each task to its own expert) with merged attention, per shared merge.

    Equal to a top-1 Mixtral of that shared merge whose router is always right: the cost of
    merging the shared parameters alone. (Separate attention + oracle = each expert on its task.)
    """
    cfg = b.cfg
    for shared in cfg.shared:
        moe = ppl_moe_merged(b.base, b.experts, shared=b.spec("shared", shared), device=cfg.device)
        label = f"oracle route, merged-attn ({shared})"
        b.record(label, {
            t.name: b.ev.task_examples(ForcedExpert(moe, k), [t], split=cfg.split)[t.name]
            for k, t in enumerate(b.tasks)
        })  # fmt: skip
        del moe
    gc.collect()


def _hetero(b: Bench) -> None:
    """The odd expert alone, and the heterogeneous MoE in which it replaces its task's expert."""
    cfg, h = b.cfg, b.cfg.hetero
    odd, task = b.pool.extra.get("odd_expert"), b.pool.extra.get("odd_expert_task")
    if not h.enabled or odd is None or task not in b.experts:
        log.warning("no heterogeneous run (disabled, or the pool has no odd expert)")
        return
    b.score(f"expert {task} (odd)", lambda: b.load(Path(odd)), moe=False)
    mixed = {n: (Path(odd) if n == task else p) for n, p in b.experts.items()}
    train = [ex for t in b.tasks for ex in t.search[: h.train_examples]]
    eos = [t.eos for t in b.tasks for _ in t.search[: h.train_examples]]

    def make() -> Any:
        moe = build_hetero(mixed, top_k=h.top_k, init=h.init, device=cfg.device)
        losses = train_hetero(
            moe, train, b.tokenizer, steps=h.steps, batch_size=h.batch_size,
            lr=h.lr, proj_lr=h.proj_lr, seed=cfg.seed, router_loss=h.router_loss, eos=eos,
        )  # fmt: skip
        log.info("hetero training loss %.3f -> %.3f", losses[0], losses[-1])
        return moe

    label = f"hetero ({task}=odd, {h.init})"
    b.confusion(label, b.score(label, make))


def _per_task(b: Bench) -> str:
    """What the per-task columns show, in words."""
    return " / ".join(dict.fromkeys(m.replace("_", " ") for m in b.metric.values()))


def _macro(b: Bench, label: str, metric: str) -> float:
    """Macro-average of ``metric`` over the tasks for one row."""
    return float(np.mean([b.rows[label][n].get(metric) for n in b.names]))


def _intervals(o: dict[str, Any]) -> str:
    """A check's paired intervals in words ("" for a check recorded without them)."""
    if "intervals" not in o:
        return ""
    cis = ", ".join(f"[{lo:+.4f}, {hi:+.4f}]" for lo, hi in o["intervals"])
    word = "every interval above 0" if o["significant"] else "not every interval above 0"
    return f"; first minus each other, 95 % paired bootstrap {cis}: {word}"


def claim_holds(values: Sequence[float]) -> bool:
    """Whether the first value beats (is strictly above) every other one."""
    return all(values[0] > v for v in values[1:])


def _ordering(b: Bench) -> list[dict[str, Any]]:
    """MergeME's claimed orderings, each checked on the macro-averages as measured.

    (1) TIES / DARE shared parameters beat BTX's plain average (same router; and with oracle
        routing, where no router error hides the effect);
    (2) PPL routing with separate attention beats merged attention and the dense merge of the
        same method (each of them; how those two compare is not part of the claim).
    "Beats" is strictly above (``claim_holds``): a tie does not hold. Each check also gives the
    paired-bootstrap 95 % interval of the first row minus each other one (the same TEST examples
    resampled for both; ``stats.paired_macro_ci``), and ``significant``: every interval above 0.
    """
    cfg, rows = b.cfg, b.rows
    chains: list[list[str]] = []
    avg = f"mixtral (average, {cfg.router})"
    for s in cfg.shared:
        if s != "average" and avg in rows:
            chains.append([f"mixtral ({s}, {cfg.router})", avg])
    oracle = "oracle route, merged-attn ({})"
    for s in cfg.shared:
        if s != "average" and oracle.format("average") in rows and oracle.format(s) in rows:
            chains.append([oracle.format(s), oracle.format("average")])
    sep, merged = "ppl separate-attn", f"ppl merged-attn ({cfg.ppl.shared})"
    dense = f"dense {cfg.ppl.shared}"
    chain = [x for x in (sep, merged, dense) if x in rows]
    if len(chain) > 1:
        chains.append(chain)
    out = []
    for chain in chains:
        for metric in b.metrics:
            vals = [_macro(b, x, metric) for x in chain]
            holds = claim_holds(vals)
            verdict = "holds" if holds else "does NOT hold"
            if len(set(vals)) == 1:
                verdict = "all equal (vacuous)"
            cis = [paired_macro_ci(b.examples[chain[0]], b.examples[x], metric, seed=cfg.seed)
                   for x in chain[1:]]  # fmt: skip
            out.append({"claim": f"{chain[0]} > {', '.join(chain[1:])}", "metric": metric,
                        "values": [round(v, 4) for v in vals], "holds": holds,
                        "verdict": verdict, "intervals": [list(ci) for ci in cis],
                        "significant": all(lo > 0 for lo, _ in cis)})  # fmt: skip
    return out


def _table_rows(b: Bench) -> list[list[str]]:
    """The printed table: each task's headline metric, then macro EM, token accuracy and loglik."""
    out = []
    for label, scores in b.rows.items():
        em = [scores[n].get(b.metric[n]) for n in b.names]
        macro = [_macro(b, label, m) for m in ("exact_match", "token_accuracy", "loglik")]
        out.append([label, *[f"{v:.3f}" for v in em], *[f"{v:.3f}" for v in macro]])
    return out


def _markdown(b: Bench, ordering: list[dict[str, Any]]) -> str:
    """The tables as Markdown (moe_table.md)."""
    head = ["variant", *b.names, "macro EM", "macro tok-acc", "macro loglik"]
    lines = [
        f"# MergeME on pool {b.pool.name!r} ({b.cfg.split} split, {_per_task(b)} per task)",
        "",
    ]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in _table_rows(b)]
    for label, conf in b.confusions.items():
        experts = list(next(iter(conf.values())))
        lines += ["", f"## {label}: prompts per (task, chosen expert)", ""]
        lines += [
            "| task \\ expert | " + " | ".join(experts) + " |",
            "|" + "---|" * (1 + len(experts)),
        ]
        lines += [
            f"| {t} | " + " | ".join(str(c[e]) for e in experts) + " |" for t, c in conf.items()
        ]
    if b.token_share:
        lines += [
            "",
            "## Mixtral token routing: share of (token, layer) top-1 = the task's expert",
            "",
        ]
        lines += ["| variant | " + " | ".join(b.names) + " |", "|" + "---|" * (1 + len(b.names))]
        lines += [f"| {lb} | " + " | ".join(f"{s[n]:.2f}" for n in b.names) + " |"
                  for lb, s in b.token_share.items()]  # fmt: skip
    lines += ["", "## The paper's orderings, as measured (macro-averages)", ""]
    lines += [f"- {o['claim']} on {o['metric']}: {o['values']} -> {o['verdict']}"
              f"{_intervals(o)}" for o in ordering]  # fmt: skip
    return "\n".join(lines) + "\n"


def run(cfg: DictConfig) -> float:
    """Build and score every variant; print the tables; return the best MoE's macro of the tasks'
    headline metric (exact match on the zoo), or of token accuracy where the tasks' headline
    metrics differ (a macro of exact match and log-likelihood together would mean nothing)."""
    threads = cfg.get("threads")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"threads: expected an integer >= 1 or null, got {threads!r}")
        torch.set_num_threads(threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    hydra_dir = HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None
    run_dir = Path(cfg.get("run_dir") or hydra_dir or "outputs/moe")
    b = Bench(cfg, instantiate(cfg.pool), run_dir / "moe_models")
    start = time.perf_counter()
    for part in (_singles, _mixtrals, _ppl, _oracle, _hetero):
        part(b)
    ordering = _ordering(b)
    _print(b, ordering)
    results = {
        "pool": b.pool.name,
        "split": cfg.split,
        "tasks": b.names,
        "scores": {k: {t: vars(s) for t, s in v.items()} for k, v in b.rows.items()},
        "macro": {
            k: {m: _macro(b, k, m) for m in ("exact_match", "token_accuracy", "loglik")}
            for k in b.rows
        },  # fmt: skip
        "confusion": b.confusions,
        "examples": b.examples,
        "mixtral_token_share": b.token_share,
        "ordering": ordering,
        "seconds": round(time.perf_counter() - start, 1),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "moe_results.json").write_text(json.dumps(results, indent=2, default=str))
    (run_dir / "moe_table.md").write_text(_markdown(b, ordering))
    log.info("results in %s (moe_results.json, moe_table.md)", run_dir)
    if not cfg.keep_checkpoints:
        shutil.rmtree(b.work, ignore_errors=True)
    return max(_macro(b, r, _headline(b)) for r in b.moe_rows)


def _headline(b: Bench) -> str:
    """The metric ``run`` returns: the tasks' shared headline metric, else token accuracy."""
    shared = set(b.metric.values())
    return shared.pop() if len(shared) == 1 else "token_accuracy"


def _print(b: Bench, ordering: list[dict[str, Any]]) -> None:
    """The tables, confusion matrices and ordering checks on the console."""
    title = f"MergeME on {b.pool.name}: {_per_task(b)} per task ({b.cfg.split} split)"
    table = Table(title=title)
    table.add_column("variant", no_wrap=True)
    for n in b.names:
        table.add_column(n, justify="right")
    table.add_column("macro EM", justify="right", style="bold")
    table.add_column("macro tok-acc", justify="right")
    table.add_column("macro loglik", justify="right")
    for row in _table_rows(b):
        table.add_row(*row)
    console.print(table)
    if b.token_share:
        t = Table(
            title="Mixtral token routing: share of (token, layer) choices = the task's expert"
        )
        t.add_column("variant", no_wrap=True)
        for n in b.names:
            t.add_column(n, justify="right")
        for label, share in b.token_share.items():
            t.add_row(label, *[f"{share[n]:.2f}" for n in b.names])
        console.print(t)
    for label, conf in b.confusions.items():
        experts = list(next(iter(conf.values())))
        m = Table(title=f"{label}: prompts per (task, chosen expert)")
        m.add_column("task \\ expert")
        for e in experts:
            m.add_column(e, justify="right")
        for task, counts in conf.items():
            m.add_row(task, *[str(counts[e]) for e in experts])
        console.print(m)
    console.print("The paper's orderings, as measured (macro-averages):")
    for o in ordering:
        line = f"  {o['claim']}  [{o['metric']}]  {o['values']}  -> {o['verdict']}{_intervals(o)}"
        console.print(line, markup=False, soft_wrap=True)


main = hydra_entry("moe", run, log)


if __name__ == "__main__":
    main()
