"""Regenerate the README's figures in one command, under one comparison protocol.

    python -m experiments.figures                           # the held-out protocol (hours)
    python -m experiments.figures --protocol smoke          # a quick check: tiny zoo, budget 4
    python -m experiments.figures --zoo-seeds 1 --search-seeds 100 101 --budget 100 \\
        --only zoo,compare,main
    make figures ARGS="--protocol smoke"                    # --jobs <cores>, as make passes it

Sections (``--only``, all by default), each for every zoo training seed of the protocol
(conf/protocol/<name>.yaml; ``--set``, ``--zoo-seeds``, ``--search-seeds``, ``--budget`` override
it, and the overrides are recorded with it):

========  =========================================================================================
zoo       the pool, built or found in the cache (merge_env.pools.zoo), its model x task table on
          the TEST split, the trade-off checks and the fine-tune regime verdict
          (experiments/build_zoo.py, merge_env/pools/regime.py)
compare   the agent comparison under the protocol (experiments/compare_agents.py: search and test
          hypervolume, 95 % bootstrap intervals, rank tests against the best baseline)
ablate    PPO's ablations under the protocol (experiments/ablate_ppo.py)
main      the main job (experiments/run.py) under the protocol's settings, one run per job seed
recycle   checkpoint recycling (experiments/recycle.py), one run per job seed
moe       MergeME (experiments/moe.py), one run per MoE seed
moe_text  MergeME on the whole-text zoo of each zoo seed (``pool.loss_on=text``: every model
          trained with the loss on the whole sequence, so an expert's perplexity on a prompt tells
          its task, as MergeME's routing assumes; the zoo is built on first use); a pool without
          that setting (SmolLM2) records the section as not applicable
moe_domains  MergeME on the real-domain SmolLM2 experts (``pool=smollm2_domains``, training seed
          = each zoo seed; built first; batch 16; ``--moe-domains-override`` changes its
          config), scored on the continuation's log-likelihood;
          on a SmolLM2 protocol only (others record it as not applicable). About 18 minutes to
          train and 19 to score a pool on 2 CPU cores
========  =========================================================================================

Job seeds are the protocol's search seeds unless ``--job-seeds`` names others; MoE runs once per
zoo seed (``--moe-seeds``, default the first search seed: its only randomness is DARE's drop and
the random router). Budgets: compare, ablate and main spend the protocol's; recycling its own
(conf/recycle.yaml) capped at the protocol's, so a smoke protocol stays a smoke.

The output folder (default ``results/figures/<protocol>/``) holds ``figures.md`` (every table,
each figure the mean and 95 % bootstrap interval over seeds, experiments/stats.py; the protocol,
the git commit, the machine), ``figures.json`` (the raw numbers behind it) and each section's own
outputs: ``compare/`` and ``ablate/`` (results.json and plots), ``main/``, ``recycle/``, ``moe/``,
``moe_text/``, ``moe_domains/`` (one run folder per zoo seed and seed). Both files are rewritten as
each section finishes.

``--jobs N`` runs N of a section's runs at a time, each in a worker process of its own (spawned,
``--threads`` torch threads each): the main job, recycling and MergeME one (zoo seed, seed) run
per worker; compare and ablate split into one store per (zoo seed, search seed) under
``<section>/parts/`` (their own ``--set "search_seeds=[S]"`` split) and merged with their
``--merge`` into ``<section>/results.json``. Every run is seeded on its own and writes only its
own folder, so the figures do not depend on N (tested on the smoke protocol, number for number).
A compare or ablate store begun with ``--jobs 1`` is refused by ``--jobs N`` before anything
runs (finish it with ``--jobs 1``, or ``--force``).

Resuming: a finished section whose settings are unchanged is skipped (``--force`` redoes it from
nothing). Inside a section finished runs are kept (compare's and ablate's results.json, the job
folders' summary files), so a killed command, run again, continues where it stopped; a job's run
folder made with other settings (``--*-override``, ``--main-agent``; kept in its
``figures_params.json``) is emptied and run again, and compare and ablate refuse a store whose
runs were made with other agent overrides or configs. A section
that fails has its error written into both files; the command goes on with the next section and
exits with status 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import math
import os
import platform
import shlex
import shutil
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from experiments import ablate_ppo, compare_agents, stats
from experiments.build_zoo import core_digest, score_zoo, tradeoff_report
from experiments.build_zoo import print_table as print_zoo_table
from experiments.protocol import (
    compose_config,
    git_commit,
    load_protocol,
    protocol_diffs,
    run_config,
)
from experiments.report import markdown_table
from merge_env.errors import ConfigError, MergeGymError
from merge_env.pools.cache import build_machine, describe_machine
from merge_env.pools.regime import assess_regime
from merge_env.pools.spec import zoo_pool_config
from merge_env.pools.zoo import build_zoo
from merge_env.search.recipe import BASE

log = logging.getLogger("mergegym.figures")
console = Console()
SECTIONS = ("zoo", "compare", "ablate", "main", "recycle", "moe", "moe_text", "moe_domains")
RUN_PARAMS = "figures_params.json"  # in each job run folder: the settings it was made with
# compare's default agents: every config of conf/agent, the README's held-out table
AGENTS = ("ppo", "moead", "nsga2", "tpe", "mo_cmaes", "cmaes", "random")
ZOO_POOL = "merge_env.pools.spec.zoo_pool"
SMOLLM2_POOL = "merge_env.pools.smollm2.smollm2_pool"
DOMAINS_TARGET = "merge_env.pools.domains.domain_pool"


@dataclasses.dataclass
class Context:
    """What every section reads: the protocol, the command's options, the output folder."""

    protocol: dict[str, Any]
    args: argparse.Namespace
    out: Path
    # each section's params as figures.json last recorded them (what its run folders were made
    # with, for those that hold no RUN_PARAMS of their own)
    previous: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def job_seeds(self) -> list[int]:
        return list(self.args.job_seeds or self.protocol["search_seeds"])

    @property
    def moe_seeds(self) -> list[int]:
        return list(self.args.moe_seeds or self.protocol["search_seeds"][:1])

    def protocol_args(self) -> list[str]:
        """The protocol's name and overrides as compare_agents / ablate_ppo arguments."""
        sets = self.protocol["overrides"]
        return ["--protocol", self.protocol["name"], *(["--set", *sets] if sets else [])]

    def params(self, section: str) -> dict[str, Any]:
        """The options a section's results depend on besides the protocol (a change redoes it)."""
        a = self.args
        return {
            "zoo": {}, "compare": {"agents": a.agents}, "ablate": {"variants": a.variants},
            "main": {"agent": a.main_agent, "seeds": self.job_seeds,
                     "overrides": a.main_override},
            "recycle": {"seeds": self.job_seeds, "overrides": a.recycle_override},
            "moe": {"seeds": self.moe_seeds, "overrides": a.moe_override},
            "moe_text": {"seeds": self.moe_seeds, "overrides": a.moe_override},
            "moe_domains": {"seeds": self.moe_seeds, "overrides": a.moe_domains_override},
        }[section]  # fmt: skip

    def run_params(self, section: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What one run folder of a job section depends on: the section's params (``params``,
        default this invocation's) but the seed list, which names the folders."""
        given = self.params(section) if params is None else params
        return {k: v for k, v in given.items() if k != "seeds"}

    def fresh(self, folder: Path) -> Path:
        """``folder``, emptied first under --force."""
        if self.args.force:
            shutil.rmtree(folder, ignore_errors=True)
        return folder


def job_config(
    config_name: str, protocol: Mapping[str, Any], zoo_seed: Any, seed: int,
    settings: Mapping[str, Any], overrides: Sequence[str] = (),
) -> DictConfig:  # fmt: skip
    """``conf/<config_name>.yaml`` on the protocol's pool and zoo seed with ``settings``
    ({dotted key: value}) applied; a key the user's Hydra ``overrides`` set keeps their value."""
    cfg = compose_config([f"pool={protocol['pool']}", f"seed={seed}", *overrides], config_name)
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    settings = {
        **{f"pool.{k}": v for k, v in protocol["pool_settings"].items()},
        **({"pool.seed": zoo_seed} if zoo_seed is not None else {}), **settings,
    }  # fmt: skip
    for key, value in settings.items():
        if key not in given:
            OmegaConf.update(cfg, key, value)
    return cfg


# --- the sections: each returns its raw numbers -----------------------------------------------


def _build_pool(pool: DictConfig, zoo_seed: Any) -> tuple[Any, dict[str, Any]]:
    """The zoo (with its extras) or the SmolLM2 pool of ``pool`` (a composed pool config, seed
    set), built or found in the cache, and how its build went."""
    target = pool.get("_target_")
    t0 = time.perf_counter()
    if target == ZOO_POOL:
        seed = pool.get("seed", zoo_seed)  # a composed pool holds it (zoo_seed None: its default)
        config = zoo_pool_config(pool.preset, seed, pool.get("tasks"),
                                 pool.get("loss_on", "answer"))  # fmt: skip
        zoo = build_zoo(config, pool.cache_dir, progress=sys.stderr.isatty(), extras=True,
                        shipped=bool(pool.get("shipped", True)))  # fmt: skip
        took = zoo.build_seconds + zoo.extras_seconds
        return zoo, {
            "preset": pool.preset, "task_kinds": list(config.tasks), "loss_on": config.loss_on,
            "build_seconds": zoo.build_seconds,
            "extras_seconds": zoo.extras_seconds,
            "built": f"{zoo.build_seconds:.1f} s for the base and experts, "
                     f"{zoo.extras_seconds:.1f} s for the recycling pool and odd expert",
            "found_in_cache": time.perf_counter() - t0 < 0.5 * took,
            "trained_on": describe_machine(zoo.built_on), "weights_digest": core_digest(zoo),
            "shipped": bool(zoo.installed),
        }  # fmt: skip
    if target == SMOLLM2_POOL:
        from hydra.utils import instantiate

        from merge_env.pools.smollm2 import load_smollm2_pool

        smol = load_smollm2_pool(instantiate(pool).extra["root"])
        return smol, {
            "preset": "smollm2", "build_seconds": smol.finetune_seconds,
            "extras_seconds": 0.0, "convert_seconds": smol.convert_seconds,
            "built": f"{smol.convert_seconds:.1f} s converting the GGUF, "
                     f"{smol.finetune_seconds:.1f} s fine-tuning the generalist and experts",
            "found_in_cache": time.perf_counter() - t0 < 0.5 * smol.finetune_seconds,
            "trained_on": describe_machine(smol.built_on), "weights_digest": core_digest(smol),
        }  # fmt: skip
    if target == DOMAINS_TARGET:
        from hydra.utils import instantiate

        from merge_env.pools.domains import load_domain_pool

        domains = load_domain_pool(instantiate(pool).extra["root"])
        return domains, {
            "preset": "smollm2_domains", "build_seconds": domains.finetune_seconds,
            "extras_seconds": 0.0, "root": str(domains.root),
            "built": f"{domains.finetune_seconds:.1f} s fine-tuning the domain experts",
            "found_in_cache": time.perf_counter() - t0 < 0.5 * domains.finetune_seconds,
            "trained_on": describe_machine(domains.built_on),
            "weights_digest": core_digest(domains),
        }  # fmt: skip
    raise ConfigError(f"zoo section: pool {target} is neither the zoo ({ZOO_POOL}) nor SmolLM2 "
                      f"({SMOLLM2_POOL}); pass --only without zoo")  # fmt: skip


def run_zoo(ctx: Context) -> dict[str, Any]:
    """Per zoo seed (the pool's training seed): the zoo or SmolLM2 pool built or loaded, its
    TEST table, trade-off checks and regime."""
    out = []
    metric = ctx.protocol["fidelity"].get("metric") or "exact_match"  # of the trade-off checks
    for zoo_seed in ctx.protocol["zoo_seeds"]:
        zoo, built = _build_pool(job_config("config", ctx.protocol, zoo_seed, 0, {}).pool, zoo_seed)
        scores = score_zoo(zoo, "test")
        print_zoo_table(zoo, scores, console, f"{built['preset']} seed {zoo_seed}: TEST split")
        found = assess_regime({BASE: zoo.base, **zoo.experts}, zoo.tasks, zoo.tokenizer_dir)
        regime, vectors = found.regime, found.vectors
        out.append({
            "zoo_seed": zoo_seed, "root": str(zoo.root), **built,
            "n_test": len(zoo.tasks[0].test), "tasks": [t.name for t in zoo.tasks],
            "experts": list(zoo.experts),
            "scores": {row: {t: vars(s) for t, s in by_task.items()}
                       for row, by_task in scores.items()},
            "metric": metric, "tradeoff": [{"holds": h, "sentence": s}
                                           for h, s in tradeoff_report(zoo, scores, metric)],
            "regime": {"scores": found.scores, "gains": regime.gains, "kept": regime.kept,
                       "kept_intervals": regime.intervals, "kept_alone": regime.alone,
                       "dominant": regime.dominant, "best_judged": list(regime.best_judged),
                       "holds": regime.holds, "lambda_on_search": found.curves,
                       "task_vectors": {"relative": vectors.relative, "cosine": {
                           part: {f"{a}-{b}": c for (a, b), c in pairs.items()}
                           for part, pairs in vectors.cosine.items()}},
                       "checks": [{"holds": h, "sentence": s} for h, s in regime.sentences()]},
        })  # fmt: skip
    return {"zoos": out}


def _worker_init(threads: int, commit: Mapping[str, Any]) -> None:
    """A --jobs worker: the parent's torch threads, logging and pinned commit."""
    from experiments import protocol

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(threads)
    protocol._STARTED_AT = dict(commit)


def _unit(label: str, fn: Callable[..., Any], *args: Any) -> None:
    """One run of a section, announced (in a --jobs worker or in this process)."""
    console.print(label)
    fn(*args)


def run_units(ctx: Context, units: Sequence[tuple[str, Callable[..., Any], tuple]]) -> None:
    """Each (label, function, arguments) unit: one after another in this process, or with
    ``--jobs N`` across N worker processes (spawned, each with ``--threads`` torch threads).
    Every unit runs to its end either way; the first failure is raised after the others finish,
    so what they wrote is there for the next run to resume from. A unit writes only its own
    folder, and every run is seeded on its own, so the figures do not depend on --jobs."""
    if ctx.args.jobs <= 1 or len(units) <= 1:
        for label, fn, args in units:
            _unit(label, fn, *args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    errors: list[BaseException] = []
    with ProcessPoolExecutor(
        min(ctx.args.jobs, len(units)), mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init, initargs=(ctx.args.threads, git_commit()),
    ) as pool:  # fmt: skip
        futures = [pool.submit(_unit, label, fn, *args) for label, fn, args in units]
        for future, (label, _, _) in zip(futures, units, strict=True):
            try:
                future.result()
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the others still finish
                log.error("%s failed: %s: %s", label, type(exc).__name__, exc)
                errors.append(exc)
    if errors:
        raise errors[0]


STORE_MAINS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "compare": compare_agents.main, "ablate": ablate_ppo.main,
}  # fmt: skip


def _store_part(name: str, argv: list[str]) -> None:
    STORE_MAINS[name](argv)


def _store_section(ctx: Context, name: str, extra: list[str]) -> dict[str, Any]:
    """compare_agents or ablate_ppo under the protocol into ``<out>/<name>``, resuming its
    results.json. With ``--jobs N`` the protocol is split into one store per (zoo seed, search
    seed) under ``<name>/parts/`` (the commands' own split), run N at a time and merged into
    ``<name>/results.json`` with their ``--merge``."""
    folder = ctx.out / name
    main = STORE_MAINS[name]
    if ctx.args.jobs <= 1:
        return main([*ctx.protocol_args(), *extra, "--out", str(folder),
                     *(["--rerun"] if ctx.args.force else [])])  # fmt: skip
    if ctx.args.force:
        shutil.rmtree(folder, ignore_errors=True)
    store = folder / "results.json"
    if compare_agents.holds_own_runs(store):  # the --merge below would refuse it, after the runs
        raise ConfigError(f"{store}: its runs were made with --jobs 1; resume it with --jobs 1, "
                          "or pass --force to redo the section with --jobs")  # fmt: skip
    sets = ctx.protocol["overrides"]
    units, parts = [], []
    for zoo_seed in ctx.protocol["zoo_seeds"]:
        for seed in ctx.protocol["search_seeds"]:
            part = folder / "parts" / f"z{zoo_seed}__{seed}"
            seeds = [f"zoo_seeds={compare_agents.seed_list([zoo_seed])}",
                     f"search_seeds={compare_agents.seed_list([seed])}"]  # fmt: skip
            argv = ["--protocol", ctx.protocol["name"], "--set", *sets, *seeds, *extra,
                    "--out", str(part)]  # fmt: skip
            units.append((f"[bold]{name}[/bold] zoo seed {zoo_seed} search seed {seed}",
                          _store_part, (name, argv)))  # fmt: skip
            parts.append(part)
    run_units(ctx, units)
    # the merge analyses the names asked for (``extra``), not every name a part store holds
    # from an earlier run of the section: the figures must not depend on --jobs
    return main(["--merge", *map(str, parts), *extra, "--out", str(folder)])


def run_compare(ctx: Context) -> dict[str, Any]:
    """experiments.compare_agents under the protocol, resuming its results.json."""
    data = _store_section(ctx, "compare", ["--agents", *ctx.args.agents])
    return {"folder": str(ctx.out / "compare"), "runs": len(data["runs"]),
            "comparisons": data["comparisons"]}  # fmt: skip


def run_ablate(ctx: Context) -> dict[str, Any]:
    """experiments.ablate_ppo under the protocol, resuming its results.json."""
    data = _store_section(ctx, "ablate", ["--variants", *ctx.args.variants])
    return {"folder": str(ctx.out / "ablate"), "runs": len(data["runs"]),
            "ablations": data["comparisons"]}  # fmt: skip


def _job_runs(
    ctx: Context, name: str, seeds: Sequence[int], summary_file: str,
    job: Callable[[Context, Any, int, Path], None],
) -> list[dict[str, Any]]:  # fmt: skip
    """Every (zoo seed, seed) run of a job in ``<out>/<name>/z<zoo seed>__<seed>``, each run only
    if its ``summary_file`` is missing or it was made with other settings (``Context.run_params``:
    the folder's RUN_PARAMS, else the section's params figures.json last recorded; such a folder
    is emptied and run again) (``run_units``: --jobs at a time); returns the summaries with their
    seeds and folders. ``job`` is a module-level function, so a worker can run it."""
    now = ctx.run_params(name)
    before = ctx.previous.get(name)
    cells = [(zoo_seed, seed, ctx.fresh(ctx.out / name / f"z{zoo_seed}__{seed}"))
             for zoo_seed in ctx.protocol["zoo_seeds"] for seed in seeds]  # fmt: skip
    for _, _, folder in cells:
        stamp = folder / RUN_PARAMS
        if stamp.is_file():
            made = json.loads(stamp.read_text())
        else:  # made before run folders kept their settings: the section's last record says
            made = now if before is None else ctx.run_params(name, before)
        if (folder / summary_file).is_file() and made != now:
            log.info("%s: made with %s, now %s: run again", folder, made, now)
            shutil.rmtree(folder)
    run_units(ctx, [(f"[bold]{name}[/bold] zoo seed {z} seed {s}", job, (ctx, z, s, folder))
                    for z, s, folder in cells if not (folder / summary_file).is_file()])  # fmt: skip
    for _, _, folder in cells:
        if (folder / summary_file).is_file():
            (folder / RUN_PARAMS).write_text(json.dumps(now, sort_keys=True))
    return [{"zoo_seed": z, "seed": s, "folder": str(folder),
             **json.loads((folder / summary_file).read_text())} for z, s, folder in cells]  # fmt: skip


def _main_job(ctx: Context, zoo_seed: Any, seed: int, folder: Path) -> None:
    from experiments.run import run

    cfg, _ = run_config(ctx.protocol, ctx.args.main_agent, seed, zoo_seed, "both",
                        ["logger=none", *ctx.args.main_override])  # fmt: skip
    cfg.run_name, cfg.run_dir = f"figures__main__z{zoo_seed}__{seed}", str(folder)
    run(cfg)


def run_main(ctx: Context) -> dict[str, Any]:
    """The main job (experiments.run) under the protocol's settings, per zoo seed and job seed."""
    return {"agent": ctx.args.main_agent,
            "runs": _job_runs(ctx, "main", ctx.job_seeds, "summary.json", _main_job)}  # fmt: skip


def _recycle_job(ctx: Context, zoo_seed: Any, seed: int, folder: Path) -> None:
    from experiments.recycle import run

    settings = {
        "budget": min(compose_config([], "recycle").budget, ctx.protocol["budget"]),
        "threads": ctx.args.threads, "run_dir": str(folder),
        "run_name": f"figures__recycle__z{zoo_seed}__{seed}",
        **{f"evaluator.{k}": v for k, v in ctx.protocol["fidelity"].items()},
    }  # fmt: skip
    run(job_config("recycle", ctx.protocol, zoo_seed, seed, settings, ctx.args.recycle_override))


def run_recycle(ctx: Context) -> dict[str, Any]:
    """Checkpoint recycling (experiments.recycle) on each zoo seed's pool, per job seed."""
    return {"runs": _job_runs(ctx, "recycle", ctx.job_seeds, "summary.json", _recycle_job)}


def _moe_job(
    ctx: Context, zoo_seed: Any, seed: int, folder: Path, extra: Sequence[str] = ()
) -> None:
    from experiments.moe import run

    settings = {"threads": ctx.args.threads, "run_dir": str(folder),
                "max_examples": ctx.protocol["fidelity"].get("max_examples")}  # fmt: skip
    overrides = [*ctx.args.moe_override, *extra]
    run(job_config("moe", ctx.protocol, zoo_seed, seed, settings, overrides))


def run_moe(ctx: Context) -> dict[str, Any]:
    """MergeME (experiments.moe) on each zoo seed's experts, per MoE seed."""
    runs = _job_runs(ctx, "moe", ctx.moe_seeds, "moe_results.json", _moe_job)
    for r in runs:
        r.pop("config", None)  # the whole composed config: in the run folder, not here
    return {"runs": runs}


WHOLE_TEXT = "pool.loss_on=text"


def _moe_text_job(ctx: Context, zoo_seed: Any, seed: int, folder: Path) -> None:
    _moe_job(ctx, zoo_seed, seed, folder, [WHOLE_TEXT])


def run_moe_text(ctx: Context) -> dict[str, Any]:
    """MergeME on each zoo seed's whole-text zoo (``pool.loss_on=text``), per MoE seed; not
    applicable (recorded, no run) for a pool without that setting.

    The zoos are built (or found) first, here, one after another: built inside --jobs workers,
    two 2-thread trainings on 2 cores took 1,376 s each against 227-332 s alone (session 46)."""
    pool = compose_config([f"pool={ctx.protocol['pool']}"]).pool
    if "loss_on" not in pool:
        return {"runs": [], "not_applicable": f"pool={ctx.protocol['pool']} has no whole-text "
                                              "variant (pool.loss_on)"}  # fmt: skip
    built = {}
    for zoo_seed in ctx.protocol["zoo_seeds"]:
        cfg = job_config("config", ctx.protocol, zoo_seed, 0, {}, [WHOLE_TEXT])
        _, built[str(zoo_seed)] = _build_pool(cfg.pool, zoo_seed)
    runs = _job_runs(ctx, "moe_text", ctx.moe_seeds, "moe_results.json", _moe_text_job)
    for r in runs:
        r.pop("config", None)
    return {"runs": runs, "override": WHOLE_TEXT, "zoos": built}


DOMAINS_POOL = "smollm2_domains"
# separate attention holds a batch's full-vocabulary log-probabilities (49k words): batch 64 of
# the domain passages went past 24 GB in session 47, batch 16 peaked at 13.1 GB
DOMAINS_BATCH = 16


def _domains_protocol(ctx: Context) -> dict[str, Any]:
    """The protocol as the domain pool's jobs read it: ``pool=smollm2_domains``, with the
    settings the SmolLM2 pool shares with it (which GGUF, which cache, which device) carried
    over; its other pool settings are the SmolLM2 pool's own and are not applied."""
    shared = {k: v for k, v in ctx.protocol.get("pool_settings", {}).items()
              if k in ("gguf_file", "cache_dir", "device")}  # fmt: skip
    return {**ctx.protocol, "pool": DOMAINS_POOL, "pool_settings": shared}


def _moe_domains_job(ctx: Context, zoo_seed: Any, seed: int, folder: Path) -> None:
    from experiments.moe import run

    settings = {"threads": ctx.args.threads, "run_dir": str(folder), "batch_size": DOMAINS_BATCH,
                "max_examples": ctx.protocol["fidelity"].get("max_examples")}  # fmt: skip
    run(job_config("moe", _domains_protocol(ctx), zoo_seed, seed, settings,
                   ctx.args.moe_domains_override))  # fmt: skip


def run_moe_domains(ctx: Context) -> dict[str, Any]:
    """MergeME on the real-domain SmolLM2 experts (``pool=smollm2_domains``; results/moe_smollm2/),
    one pool per zoo seed of the protocol (its training seed), per MoE seed; the pools built
    first, here, one after another. Applicable to a SmolLM2 protocol only (the experts' seed
    model is SmolLM2); ``--moe-domains-override`` changes its config."""
    pool = compose_config([f"pool={ctx.protocol['pool']}"]).pool
    if pool.get("_target_") not in (SMOLLM2_POOL, DOMAINS_TARGET):
        return {"runs": [], "not_applicable": f"pool={ctx.protocol['pool']} is not SmolLM2, "
                                              "the domain experts' seed model"}  # fmt: skip
    protocol, built = _domains_protocol(ctx), {}
    for zoo_seed in ctx.protocol["zoo_seeds"]:
        cfg = job_config("moe", protocol, zoo_seed, 0, {}, ctx.args.moe_domains_override)
        _, built[str(zoo_seed)] = _build_pool(cfg.pool, zoo_seed)
    runs = _job_runs(ctx, "moe_domains", ctx.moe_seeds, "moe_results.json", _moe_domains_job)
    for r in runs:
        r.pop("config", None)
    return {"runs": runs, "pools": built}


RUNNERS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "zoo": run_zoo, "compare": run_compare, "ablate": run_ablate, "main": run_main,
    "recycle": run_recycle, "moe": run_moe, "moe_text": run_moe_text,
    "moe_domains": run_moe_domains,
}  # fmt: skip


# --- the tables: each from a section's raw numbers --------------------------------------------


def _summary(values: Sequence[float], digits: int = 5) -> str:
    """``mean [95 % CI]`` of the values over seeds (the value alone for one seed)."""
    if len(values) > 1:
        return stats.format_ci(stats.summarise(values), digits)
    return f"{values[0]:.{digits}f}" if values else "-"


def _spread(values: Sequence[float], digits: int = 5) -> str:
    return f"{min(values):.{digits}f} .. {max(values):.{digits}f}" if values else "-"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*map(str, row))
    return markdown_table(table)


def _checks(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    return [f"- {'ok' if c['holds'] else 'NO'}: {c['sentence']}" for c in checks]


def zoo_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    lines = []
    for z in result["zoos"]:
        tasks, seed = z["tasks"], z["zoo_seed"]
        how = "found in the cache" if z["found_in_cache"] else "built now"
        if z.get("shipped"):
            how = "the copy shipped with MergeGym, installed in the cache"
        built = z.get("built") or (  # figures.json of earlier versions: the zoo's build
            f"{z['build_seconds']:.1f} s for the base and experts, "
            f"{z.get('extras_seconds', 0.0):.1f} s for the recycling pool and odd expert"
        )
        if z.get("trained_on"):  # figures.json of earlier versions: neither
            built += f"; trained on {z['trained_on']}"
        if z.get("weights_digest"):
            built += f"; base + experts' weights sha256 `{z['weights_digest']}`"
        lines += [f"### Zoo seed {seed}", "",
                  f"`{z['preset']}` pool, {how} at `{z['root']}` (its build took {built}); "
                  f"{z['n_test']} TEST examples per task.", ""]  # fmt: skip
        rows = [[name, *(f"{s[t]['exact_match']:.3f} / {s[t]['token_accuracy']:.3f}" for t in tasks),
                 f"{sum(s[t]['exact_match'] for t in tasks) / len(tasks):.3f}"]
                for name, s in z["scores"].items()]  # fmt: skip
        lines += [_table(f"zoo seed {seed}: TEST exact match / token accuracy",
                         ["model", *tasks, "mean EM"], rows),
                  f"Trade-off checks on {z['metric']} (the regime below is judged on exact "
                  "match):", "", *_checks(z["tradeoff"]), ""]  # fmt: skip
        regime = z["regime"]
        rows = [[name, *(f"{s[t]:.3f}" for t in tasks)] for name, s in regime["scores"].items()]
        lines += [_table(f"zoo seed {seed}: fine-tune regime, plain merges, TEST exact match",
                         ["model", *tasks], rows), *_checks(regime["checks"]),
                  f"- regime **{'holds' if regime['holds'] else 'does NOT hold'}**", ""]  # fmt: skip
    zoos = result["zoos"]
    if zoos:
        experts = zoos[0]["experts"]
        rows = []
        for e in experts:
            own = [z["scores"][f"expert:{e}"][e]["exact_match"] for z in zoos]
            gain = [z["regime"]["gains"][e] for z in zoos]
            rows += [[f"expert:{e} on {e}", *(f"{v:.3f}" for v in own), _summary(own, 3),
                      f"{max(own) - min(own):.3f}"],
                     [f"gain over base on {e}", *(f"{v:.3f}" for v in gain), _summary(gain, 3),
                      f"{max(gain) - min(gain):.3f}"]]  # fmt: skip
        kept = [z["regime"]["best_judged"][1] for z in zoos]
        rows.append(["best plain merge's worst kept share", *(
            "-" if v is None else f"{v:.2f}" for v in kept), "-", "-"])  # fmt: skip
        rows.append(["regime holds", *("yes" if z["regime"]["holds"] else "NO" for z in zoos),
                     "-", "-"])  # fmt: skip
        lines += [_table("across zoo seeds: own-task TEST exact match (spread = max - min)",
                         ["figure", *(f"seed {z['zoo_seed']}" for z in zoos),
                          "mean [95% CI]", "spread"], rows)]  # fmt: skip
    return lines


def compare_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    lines = [f"{result['runs']} runs in `{result['folder']}` (results.json, hv_curve_*.png, "
             "fronts_*.png).", ""]  # fmt: skip
    for c in result["comparisons"]:
        lines += [markdown_table(compare_agents.comparison_table(c, protocol)),
                  *compare_agents.unsupported_notes(c, protocol), ""]  # fmt: skip
    return lines


def ablate_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    lines = [f"{result['runs']} runs in `{result['folder']}`.", ""]
    for a in result["ablations"]:
        lines += [markdown_table(ablate_ppo.table(a, protocol)), ""]
    return lines


def _by_zoo(runs: Sequence[Mapping[str, Any]]) -> dict[Any, list[Mapping[str, Any]]]:
    out: dict[Any, list] = {}
    for r in runs:
        out.setdefault(r["zoo_seed"], []).append(r)
    return out


def _ratio(value: float, baseline: float) -> float:
    """``value / baseline``; NaN where the baseline is not positive (a row's mean skips it)."""
    return value / baseline if baseline > 0 else math.nan


def _headroom_share(front: float, references: float, ceiling: float) -> float:
    """(front − references) / (ceiling − references): the share of the possible gain taken."""
    return (front - references) / (ceiling - references) if ceiling > references else math.nan


def main_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    lines = []
    refs = "single models + plain merges"
    for zoo_seed, runs in _by_zoo(result["runs"]).items():
        figures = {
            "front HV, search": [r["hypervolume_search"] for r in runs],
            "front HV, test": [r["hypervolume_test"] for r in runs],
            f"{refs} HV, search": [r["reference_hypervolume_search"][refs] for r in runs],
            f"{refs} HV, test": [r["reference_hypervolume_test"] for r in runs],
            "best single model HV, search": [
                r["reference_hypervolume_search"]["best single model"] for r in runs],
            "front / references, search": [
                _ratio(r["hypervolume_search"], r["reference_hypervolume_search"][refs])
                for r in runs],
            "front / references, test": [
                _ratio(r["hypervolume_test"], r["reference_hypervolume_test"]) for r in runs],
        }  # fmt: skip
        if all(r.get("hypervolume_ceiling") is not None for r in runs):
            # a perfect model's HV: how far any front could beat the references at all
            figures.update({
                "perfect model HV (the ceiling)": [r["hypervolume_ceiling"] for r in runs],
                "perfect model / references, test": [
                    _ratio(r["hypervolume_ceiling"], r["reference_hypervolume_test"])
                    for r in runs],
                "front's share of the headroom, test": [
                    _headroom_share(r["hypervolume_test"], r["reference_hypervolume_test"],
                                    r["hypervolume_ceiling"]) for r in runs],
            })  # fmt: skip
        if all(r.get("grid_hypervolume_test") is not None for r in runs):  # HM3's own baseline
            grid = f"{refs} + plain grid ({runs[0]['grid_merges']} merges)"
            figures.update({
                f"{grid} HV, search": [r["grid_hypervolume_search"] for r in runs],
                f"{grid} HV, test": [r["grid_hypervolume_test"] for r in runs],
                "front / (references + grid), search": [
                    _ratio(r["hypervolume_search"], r["grid_hypervolume_search"]) for r in runs],
                "front / (references + grid), test": [
                    _ratio(r["hypervolume_test"], r["grid_hypervolume_test"]) for r in runs],
                "front above references + grid, test (share of runs)": [
                    float(r["hypervolume_test"] > r["grid_hypervolume_test"]) for r in runs],
            })  # fmt: skip
        if all(r.get("grid_front_hypervolume_test") is not None for r in runs):
            # the grid picked as the front is: its points non-dominated on search, on test
            picked = "(references + grid) picked on search"
            figures.update({
                f"{picked}: points": [r["grid_front_size"] for r in runs],
                f"{picked}: HV, test": [r["grid_front_hypervolume_test"] for r in runs],
                f"front / {picked}, test": [
                    _ratio(r["hypervolume_test"], r["grid_front_hypervolume_test"])
                    for r in runs],
                f"front above {picked}, test (share of runs)": [
                    float(r["hypervolume_test"] > r["grid_front_hypervolume_test"])
                    for r in runs],
            })  # fmt: skip
        figures |= {
            "evaluations": [r["evaluations"] for r in runs],
            "front size": [r["front_size"] for r in runs],
            "wall s": [r.get("wall_s", math.nan) for r in runs],
        }  # fmt: skip
        phases = sorted({k for r in runs for k in r.get("phases", {})})
        figures.update({f"evaluations: {p}": [r.get("phases", {}).get(p, 0.0) for r in runs]
                        for p in phases})  # fmt: skip
        rows = []
        for name, values in figures.items():
            v = [x for x in values if not math.isnan(x)]
            rows.append([name, len(v), _summary(v), _spread(v)])
        seeds = [r["seed"] for r in runs]
        lines += [_table(f"main job ({result['agent']}), zoo seed {zoo_seed}, search seeds "
                         f"{seeds}", ["figure", "n", "mean [95% CI]", "min .. max"], rows), ""]  # fmt: skip
    return lines


def _search_standing(run: Mapping[str, Any], tol: float = 1e-12) -> list[tuple[str, str]]:
    """("tied with" | "below", baseline) for each baseline a recycling run's optimised merge is
    not above on the search split's objective (read from its rows, so older runs count too)."""
    from experiments.recycle import not_above_on_search

    col = "norm_macro" if run.get("objective") == "normalised" else "macro"
    values = {key: row["search"][col] for key, row in run["rows"].items()}
    return [("tied with" if how == "tied" else how, key)
            for key, how in not_above_on_search(values, tol).items()]  # fmt: skip


def recycle_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    lines = []
    for zoo_seed, runs in _by_zoo(result["runs"]).items():
        keys = list(runs[0]["rows"])
        rows = []
        for key in keys:
            test = [r["rows"][key]["test"]["macro"] for r in runs]
            search = [r["rows"][key]["search"]["macro"] for r in runs]
            norm = [r["rows"][key]["test"]["norm_macro"] for r in runs]
            active = [r["rows"][key]["active"] for r in runs]
            rows.append([key, len(runs), _summary(test, 3), _summary(search, 3),
                         _summary(norm, 3), _summary(active, 1)])  # fmt: skip
        for key in (k for k in keys if k != "optimised"):
            diff = [r["rows"]["optimised"]["test"]["macro"] - r["rows"][key]["test"]["macro"]
                    for r in runs]  # fmt: skip
            rows.append([f"optimised - {key}", len(runs), _summary(diff, 3), "-", "-", "-"])
        beats = sum(bool(r["optimised_beats_baselines_test"]) for r in runs)
        metric = runs[0]["metric"]
        standing = Counter(s for r in runs for s in _search_standing(r))
        distinct = len({r.get("recipe") for r in runs})
        notes = [
            f"- the optimised merge is {distinct} distinct merge(s) over the {len(runs)} runs"
            + (" (the runs are not independent replicates)" if distinct < len(runs) else "")
        ]
        if standing:
            said = ", ".join(f"{how} {k} in {n}" for (how, k), n in sorted(standing.items()))
            notes.append(
                f"- on the search split (the objective) the optimised merge is {said} "
                f"of the {len(runs)} runs: there its TEST margin over that baseline is "
                "not the search's doing"
            )
        lines += [_table(f"checkpoint recycling, zoo seed {zoo_seed} ({metric}, macro-average, "
                         f"seeds {[r['seed'] for r in runs]})",
                         ["merge", "n", "TEST macro", "search macro", "TEST macro / z*",
                          "active checkpoints"], rows),
                  f"- the optimised merge beats every baseline on the TEST macro-average in "
                  f"{beats} of {len(runs)} runs", *notes, ""]  # fmt: skip
    return lines


def moe_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    runs = result["runs"]
    if not runs:
        return []
    names = [f"z{r['zoo_seed']}/s{r['seed']}" for r in runs]
    rows = []
    metrics = {"exact_match": "macro EM", "token_accuracy": "macro token accuracy",
               "loglik": "macro loglik"}  # fmt: skip
    # the metrics the runs' claims were checked on (exact match on the zoo, log-likelihood on the
    # domain pool), and token accuracy
    checked = {o["metric"] for r in runs for o in r["ordering"]} | {"token_accuracy"}
    shown = [m for m in metrics if m in checked]
    for variant in runs[0]["macro"]:
        values = [_summary([r["macro"][variant][m] for r in runs], 3) for m in shown]
        rows.append([variant, len(runs), *values])
    lines = [_table(f"MergeME, {runs[0]['split']} split, macro-average over tasks; mean over "
                    f"runs {names}", ["variant", "n", *(metrics[m] for m in shown)], rows),
             "", "The paper's orderings, as measured (macro-averages), per run:", ""]  # fmt: skip
    # each claim matched by its text and metric (runs may check different row sets)
    claims = list(dict.fromkeys((o["claim"], o["metric"]) for r in runs for o in r["ordering"]))
    for claim, metric in claims:
        found = [(n, o) for n, r in zip(names, runs) for o in r["ordering"]
                 if (o["claim"], o["metric"]) == (claim, metric)]  # fmt: skip
        holds = sum(bool(o["holds"]) and o["verdict"] == "holds" for _, o in found)
        values = "; ".join(f"{n} {o['values']} {o['verdict']}" for n, o in found)
        # runs made before the paired intervals existed have none
        sig = [bool(o["significant"]) for _, o in found if "significant" in o]
        beyond = f", every paired 95 % interval above 0 in {sum(sig)} of {len(sig)}" if sig else ""
        lines.append(f"- {claim} [{metric}]: holds in {holds} of {len(found)} runs{beyond} "
                     f"({values})")  # fmt: skip
    routed = [(n, row, routing_share(c)) for n, r in zip(names, runs)
              for row, c in r.get("confusion", {}).items()]  # fmt: skip
    if routed:
        lines += ["", f"Sequence routing: share of {runs[0]['split']} prompts sent to their own "
                  "task's expert (per task in brackets):", ""]  # fmt: skip
        for n, row, (share, per) in routed:
            tasks = ", ".join(f"{t} {v:.2f}" for t, v in per.items())
            lines.append(f"- {n} {row}: {share:.3f} ({tasks})")
    return [*lines, ""]


def routing_share(confusion: Mapping[str, Mapping[str, int]]) -> tuple[float, dict[str, float]]:
    """A routing confusion (task -> chosen expert -> count): the share of prompts sent to their
    own task's expert, overall and per task."""
    total = sum(sum(c.values()) for c in confusion.values())
    right = sum(c.get(t, 0) for t, c in confusion.items())
    per = {t: c.get(t, 0) / max(1, sum(c.values())) for t, c in confusion.items()}
    return right / max(1, total), per


def moe_text_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    if result.get("not_applicable"):
        return [f"Not applicable: {result['not_applicable']}.", ""]
    zoos = {f"zoo seed {z} (`pool.loss_on={info['loss_on']}`)": info
            for z, info in result.get("zoos", {}).items()}  # fmt: skip
    return [*_built_lines(zoos), *moe_markdown(result, protocol)]


def _built_lines(pools: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per pool a section built first (``_build_pool``'s record, by its label): how it
    was built, where it was trained, its weights digest; a blank line after them."""
    lines = [f"- {label}: {p['built']}" + (", found in the cache" if p["found_in_cache"] else "")
             + (f"; trained on {p['trained_on']}" if p["trained_on"] else "")
             + f"; base + experts' weights sha256 `{p['weights_digest']}`"
             for label, p in pools.items()]  # fmt: skip
    return [*lines, ""] if lines else []


def moe_domains_markdown(result: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    if result.get("not_applicable"):
        return [f"Not applicable: {result['not_applicable']}.", ""]
    pools = {f"domain pool seed {z} (`{Path(p['root']).name}`)": p
             for z, p in result.get("pools", {}).items()}  # fmt: skip
    return [*_built_lines(pools), *moe_markdown(result, protocol)]


MARKDOWN: dict[str, Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]]] = {
    "zoo": zoo_markdown, "compare": compare_markdown, "ablate": ablate_markdown,
    "main": main_markdown, "recycle": recycle_markdown, "moe": moe_markdown,
    "moe_text": moe_text_markdown, "moe_domains": moe_domains_markdown,
}  # fmt: skip
TITLES = {
    "zoo": "Pools: model x task on the TEST split, fine-tune regime",
    "compare": "Agent comparison (hypervolume, search and TEST split)",
    "ablate": "PPO ablations", "main": "Main job (HM3 search)",
    "recycle": "Checkpoint recycling", "moe": "MergeME: dense experts -> Mixture-of-Experts",
    "moe_text": "MergeME on whole-text zoos (pool.loss_on=text)",
    "moe_domains": "MergeME on real-domain SmolLM2 experts (pool=smollm2_domains)",
}  # fmt: skip


# --- figures.json and figures.md --------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The machine the figures were measured on."""
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu_count": os.cpu_count(), "cpus_usable": len(affinity(0)) if affinity else None,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(), **build_machine(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }  # fmt: skip


def _finite(x: Any) -> Any:
    """``x`` with every NaN or infinity replaced by None (strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def read_figures(path: Path, protocol: Mapping[str, Any]) -> dict[str, Any]:
    """figures.json's sections so far ({} if none); ConfigError if made under another protocol."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    diffs = protocol_diffs(data.get("protocol", {}), protocol)
    if diffs:
        raise ConfigError(f"{path}: its figures were made under another protocol "
                          f"({'; '.join(diffs)}); pass another --out")  # fmt: skip
    return dict(data.get("sections", {}))


def render(data: Mapping[str, Any]) -> str:
    """figures.md from what figures.json holds."""
    p, commit, m = data["protocol"], data["commit"], data["machine"]
    dirty = " (tracked files changed since)" if commit.get("dirty") else ""
    lines = [
        f"# MergeGym figures: protocol `{p['name']}` ({p['purpose']})", "",
        f"Written by `{data['command']}`; run it again to regenerate (finished sections are "
        "kept). Every number below comes from the runs under this folder; the raw numbers are "
        "in `figures.json`.", "",
        f"- **protocol** `{p['name']}` (purpose {p['purpose']}): pool `{p['pool']}` "
        f"{p['pool_settings']}, zoo seeds {p['zoo_seeds']}, search seeds {p['search_seeds']}, "
        f"levels {p['levels']}, budget {p['budget']:g} evaluations, fidelity {p['fidelity']}, "
        f"screening {p['screening']}, anchors {p['anchors']}, overrides {p['overrides'] or 'none'}",
        f"- **commit** `{commit['sha']}`{dirty}",
        f"- **machine** {m.get('cpu', 'CPU unknown')}, {m['cpu_count']} CPUs "
        f"({m['cpus_usable']} usable; torch's {m.get('torch_cpu_capability', '?')} kernels), torch "
        f"{m['torch']} with {m['torch_threads']} threads, {m['platform']}, Python {m['python']}"
        f", GPU {m['gpu'] or 'none'}, load average at start {m['load_average']}",
        "- **statistics** mean and 95 % percentile-bootstrap interval of the mean over seeds "
        "(`experiments/stats.py`, 10,000 resamples; one seed: the value alone); p: two-sided "
        "Mann-Whitney U; permutation test of the difference of means, exact up to 200,000 "
        "splits (10 + 10 seeds), else 10,000 Monte Carlo resamples, marked †; the ablations "
        "add a paired Wilcoxon signed-rank test over the seeds both variants ran",
    ]  # fmt: skip
    if p["purpose"] != "reported":
        lines.append(f"- **not for reporting**: protocol purpose `{p['purpose']}` (the README's "
                     "figures come from a `reported` protocol, e.g. `heldout`)")  # fmt: skip
    lines += ["", "| section | status | wall s | finished | commit |", "|---|---|---|---|---|"]
    sections = data["sections"]
    for name in SECTIONS:
        if name in sections:
            s = sections[name]
            lines.append(f"| {name} | {s['status']} | {s['seconds']:.1f} | {s['finished']} | "
                         f"{s['commit']['sha'][:10]} |")  # fmt: skip
    lines.append("")
    for name in SECTIONS:
        if name not in sections:
            continue
        s = sections[name]
        lines += [f"## {TITLES[name]}", ""]
        if s["status"] == "failed":
            lines += [f"**FAILED**: `{s['error']}`", "", "```", s["traceback"].rstrip(), "```", ""]
            continue
        try:
            lines += MARKDOWN[name](s["result"], p)
        except Exception as exc:  # a table that cannot be drawn must not hide the others
            lines += [f"**table not drawn**: `{type(exc).__name__}: {exc}`", ""]
    lines += ["<details><summary>the protocol, in full</summary>", "", "```json",
              json.dumps(p, indent=2), "```", "", "</details>", ""]  # fmt: skip
    return "\n".join(lines)


def write(out: Path, data: dict[str, Any]) -> None:
    """figures.json and figures.md, each replaced atomically."""
    clean = _finite(data)
    for name, text in (
        ("figures.json", json.dumps(clean, indent=1)),
        ("figures.md", render(clean)),
    ):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)


# --- the command ------------------------------------------------------------------------------


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.figures",
                                description=__doc__.split("\n")[0])  # fmt: skip
    p.add_argument("--protocol", default="heldout", help="conf/protocol/<name>.yaml")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the protocol, e.g. budget=100 zoo_seeds=[1]")  # fmt: skip
    p.add_argument("--zoo-seeds", type=int, nargs="+", help="protocol override")
    p.add_argument("--search-seeds", type=int, nargs="+", help="protocol override")
    p.add_argument("--budget", type=float, help="protocol override")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})")  # fmt: skip
    p.add_argument("--agents", nargs="+", default=list(AGENTS),
                   help="compare's agents (default: every agent of conf/agent, as the README's "
                        "held-out table)")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=list(ablate_ppo.VARIANTS),
                   choices=list(ablate_ppo.VARIANTS))  # fmt: skip
    p.add_argument("--main-agent", default="ppo", help="the main job's agent (conf/agent/)")
    p.add_argument("--job-seeds", type=int, nargs="+",
                   help="main and recycle seeds (default: the protocol's search seeds)")  # fmt: skip
    p.add_argument("--moe-seeds", type=int, nargs="+",
                   help="MoE seeds (default: the protocol's first search seed)")  # fmt: skip
    for job in ("main", "recycle", "moe", "moe-domains"):
        p.add_argument(f"--{job}-override", nargs="*", default=[], metavar="KEY=VALUE",
                       help=f"Hydra overrides of the {job} job's config")  # fmt: skip
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (the small models gain nothing from more)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time, each in its own worker process (default 1: one after "
                        "another in this process); the figures do not depend on it")  # fmt: skip
    p.add_argument("--out", type=Path, help="default results/figures/<protocol>")
    p.add_argument("--force", action="store_true",
                   help="redo the chosen sections from nothing, finished runs included")  # fmt: skip
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run every chosen section not yet done; returns the exit status (1 if a section failed,
    2 on a bad protocol or option)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    git_commit()  # pinned now: what this process runs, whatever HEAD becomes meanwhile
    try:
        if args.jobs < 1:
            raise ConfigError(f"--jobs: {args.jobs} must be >= 1")
        chosen = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(chosen) - set(SECTIONS))
        if unknown or not chosen:
            raise ConfigError(f"--only: {unknown or chosen} not among {list(SECTIONS)}")
        overrides = compare_agents.legacy_overrides(argparse.Namespace(
            budget=args.budget, seeds=args.search_seeds, levels=None, zoo=None,
            cheap_examples=None))  # fmt: skip
        if args.zoo_seeds:
            overrides.append(f"zoo_seeds=[{','.join(map(str, args.zoo_seeds))}]")
        protocol = load_protocol(args.protocol, [*overrides, *args.set])
        out = args.out or Path("results/figures") / protocol["name"]
        out.mkdir(parents=True, exist_ok=True)
        sections = read_figures(out / "figures.json", protocol)
    except MergeGymError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ctx = Context(protocol, args, out, {k: v.get("params") for k, v in sections.items()
                                        if v.get("params") is not None})  # fmt: skip
    data = {"protocol": protocol, "commit": git_commit(), "machine": machine(),
            "command": shlex.join(["python", "-m", "experiments.figures", *argv]),
            "jobs": args.jobs,
            "sections": sections}  # fmt: skip
    failed = []
    for name in (s for s in SECTIONS if s in chosen):
        done = sections.get(name, {})
        if (
            not args.force
            and done.get("status") == "done"
            and done.get("params") == ctx.params(name)
        ):
            console.print(f"[bold]{name}[/bold]: done ({done['finished']}), skipped")
            continue
        console.rule(f"{name} · protocol {protocol['name']}")
        t0 = time.perf_counter()
        try:
            entry: dict[str, Any] = {"status": "done", "result": RUNNERS[name](ctx)}
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - recorded, and the next goes on
            log.exception("section %s failed", name)
            entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                     "traceback": "".join(traceback.format_exc().splitlines(True)[-12:])}  # fmt: skip
            failed.append(name)
        entry.update(params=ctx.params(name), seconds=round(time.perf_counter() - t0, 1),
                     commit=git_commit(), load_average=machine()["load_average"],
                     finished=datetime.datetime.now().isoformat(timespec="seconds"))  # fmt: skip
        sections[name] = entry
        write(out, data)
    write(out, data)
    console.print(f"figures: {out / 'figures.md'} and {out / 'figures.json'}"
                  + (f"; FAILED: {', '.join(failed)}" if failed else ""))  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
