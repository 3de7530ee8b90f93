"""Compare agents under one protocol: hypervolume against evaluations, intervals, rank tests.

    python -m experiments.compare_agents --protocol heldout --agents ppo cmaes nsga2 random
    python -m experiments.compare_agents --protocol tuning --set budget=100 --agents ppo random
    # older flags still work and are recorded as overrides of the protocol:
    python -m experiments.compare_agents --budget 200 --seeds 0 1 2 [--levels both param arch]
        [--zoo default] [--cheap-examples 16] [--out DIR] [--ppo-override agent.bc_epochs=50]

**A protocol** (``conf/protocol/<name>.yaml``) fixes, for every agent of a comparison, what
decides the outcome besides the agent: the search space (every key of the env group), the budget
and its accounting, the fidelities (the evaluator's cheap subset, metric, example cap), whether
screening and anchors are offered (``agent.screening`` / ``agent.anchors``, set on every agent
whose config has the key and recorded either way), the pool, its training seeds (zoo seeds) and
the search seeds. Protocols are a Hydra config *group* rather than flags or an ``@package
_global_`` experiment config because (a) a protocol is one choice among named alternatives of
one kind (``tuning``, ``heldout``, ``smoke``), which is what a group is, composable and
overridable like every other group (``--set budget=100``); (b) it spans many runs (lists of zoo
and search seeds) that no single run config can hold, so it must stay a node of its own rather
than be merged into the run config; (c) it must be read whole, to be recorded in results.json,
compared with the protocol of the runs already there, and checked against the tuning protocol it
names (``tuned_on``: a reported protocol's seeds may not overlap the seeds agents were tuned on).

Every (zoo seed, agent, level, search seed) run gets a fresh problem with its own archive and
evaluation cache, so no agent profits from another's evaluations. A run's config is composed
from ``conf/config.yaml`` (``agent=<name>``) with the protocol's settings applied; each run
records the space it searched (the env settings as the agent resolved them: a genome agent's
``encoding`` is its ``mode``) and the comparison refuses, in one ConfigError naming each
differing key, agents that searched different spaces, before any model is loaded and again on
the recorded runs. ``DIR/results.json`` holds the protocol, the git commit, every run (its front
re-scored on the held-out test split) and the statistics (experiments/stats.py); finished runs
are skipped when the command is run again with the same protocol, the same agent overrides and
an agent config that resolves as it did (else refused, naming the run).

A comparison too long for one process is split by seed: one invocation per zoo or search seed
(``--set "search_seeds=[S]" --out DIR_S``, in parallel or on other machines), then

    python -m experiments.compare_agents --merge DIR_100 DIR_101 ... --out DIR

runs nothing and analyses them together: the stores must share the protocol but for its seeds
(a ConfigError names the file and the keys that differ), a run held twice must have the same
figures and settings, and the merged results.json names the stores it read (``merged_from``) and
the runs of the merged protocol that none of them holds (``missing``, printed too).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from experiments import report, stats  # noqa: E402
from experiments.jobs import pool_and_tasks, scoring_problem  # noqa: E402
from experiments.protocol import (  # noqa: E402
    check_one_space,
    comparison_settings,
    git_commit,
    load_protocol,
    protocol_diffs,
    run_config,
)
from merge_env.errors import ConfigError, exit_on_error  # noqa: E402
from merge_env.search.problem import build_problem  # noqa: E402

log = logging.getLogger("mergegym.compare")
console = Console()
COLORS = {"ppo": "tab:red", "cmaes": "tab:blue", "nsga2": "tab:green", "random": "tab:gray"}


def _color(label: str) -> str | None:
    return COLORS.get(label, COLORS["ppo"] if label.startswith("ppo") else None)


# --- the runs -------------------------------------------------------------------------------


def run_one(
    protocol: Mapping[str, Any], name: str, seed: int, zoo_seed: Any, level: str, out: Path,
    overrides: Sequence[str] = (), label: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One search on a fresh problem: its hypervolume curve, front (search and test split),
    spending, the settings it searched under, the agent's own overrides and its whole resolved
    config (e.g. whether it promotes its proposals), and the commit it ran at."""
    label = label or name
    cfg, passed = run_config(protocol, name, seed, zoo_seed, level, overrides)
    folder = out / "runs" / f"z{zoo_seed}__{label}__{level}__{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    # a fresh run: the ledger too, or a rerun would start with the last run's spending
    for f in ("archive.jsonl", "eval_cache.sqlite", "ledger.jsonl", "front_test.json"):
        (folder / f).unlink(missing_ok=True)
    pool, tasks = pool_and_tasks(cfg)
    problem = scoring_problem(build_problem, pool.sources, tasks, pool, cfg, folder)
    refs = problem.references()  # the ideal point; never charged to the agent
    agent = instantiate(cfg.agent)
    t0 = time.perf_counter()
    agent.search(problem, cfg.budget)
    wall = time.perf_counter() - t0
    archive = problem.archive
    front_entries = archive.front()
    tests = report.test_scores(problem, front_entries)  # reporting only: never charged
    report.save_front(folder / "front_test.json", problem, front_entries, tests)
    ref_tests = report.reference_test_scores(problem)
    hv_test = problem.hypervolume_of(np.stack(list(tests.values()))) if tests else 0.0
    front = np.array([e.vector(problem.objectives) for e in front_entries])
    close = getattr(problem.backend, "close", None)  # a RayBackend's actors
    if close is not None:
        close()
    return {
        "agent": label, "seed": seed, "zoo_seed": zoo_seed, "level": level,
        "protocol": protocol["name"], "budget": cfg.budget, "settings": comparison_settings(cfg),
        "passed": passed, "commit": git_commit(), "agent_overrides": list(overrides),
        "agent_config": agent_config(cfg),
        "spent": problem.spent, "entries": len(archive), "cache_hits": problem.cache_hits,
        "wall_s": wall, "curve": problem.hypervolume_curve(),
        "hv": problem.hypervolume_of(archive.score_matrix()) if len(archive) else 0.0,
        "hv_test": hv_test, "front": front.tolist(),
        "front_test": [np.asarray(tests[e.recipe_hash]).tolist() for e in front_entries],
        "objectives": problem.objectives,
        "references": {k: v.tolist() for k, v in refs.items()},
        "references_hv": problem.hypervolume_of(np.stack(list(refs.values()))),
        "references_hv_test": problem.hypervolume_of(np.stack(list(ref_tests.values()))),
        "ideal": problem.ideal.tolist(),
        "phases": dict(getattr(agent, "phase_spend", {}) or {}),
        "hv_by_source": hv_by_source(problem),
        # PPO: what online learning did (updates, losses, entropy, KL, stall), without history
        "online": {k: v for k, v in (getattr(agent, "online_stats", {}) or {}).items()
                   if k != "history"},
    }  # fmt: skip


def hv_by_source(problem: Any) -> dict[str, float]:
    """Hypervolume of the archive entries each source scored, alone (PPO: ``env`` = its policy's
    episodes, ``ppo`` = promoted offline candidates and explore episodes)."""
    entries = list(problem.archive)
    out = {}
    for source in sorted({e.source for e in entries}):
        vectors = [e.vector(problem.objectives) for e in entries if e.source == source]
        out[source] = problem.hypervolume_of(np.array(vectors))
    return out


def preflight(
    protocol: Mapping[str, Any], agents: Sequence[str], labels: Sequence[str],
    overrides: Mapping[str, Sequence[str]],
) -> None:  # fmt: skip
    """Compose every agent's config under the protocol and refuse different spaces, before any
    model is loaded."""
    records = [
        {"agent": label, "level": level,
         "settings": comparison_settings(run_config(
             protocol, agent, protocol["search_seeds"][0], protocol["zoo_seeds"][0], level,
             overrides.get(agent, ()))[0])}
        for agent, label in zip(agents, labels) for level in protocol["levels"]
    ]  # fmt: skip
    check_one_space(records)


def agent_config(cfg: Any) -> dict[str, Any]:
    """A composed run config's agent section, resolved, as JSON data (what a run records)."""
    return json.loads(json.dumps(OmegaConf.to_container(cfg.agent, resolve=True)))


def config_diffs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for each (nested) key on which two configs differ."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "(unset)"), new.get(key, "(unset)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_diffs(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def check_resumed_runs(
    store: Path, runs: Sequence[Mapping[str, Any]], protocol: Mapping[str, Any],
    agents: Mapping[str, tuple[str, Sequence[str]]],
    hint: str = "pass --tag to keep the variants apart, --rerun, or another --out",
) -> None:  # fmt: skip
    """ConfigError naming the run (and ``hint``, what the caller's user can do): a finished run
    in ``store`` of a label this invocation runs (``agents``: label -> (agent, overrides)) made
    with other agent overrides, or whose recorded agent config differs from the one this
    invocation composes for it (an agent's YAML default changed since; a change of the agents'
    code is not seen), so that a resumed comparison never mixes two configurations under one
    label. A run stored before overrides were recorded is refused only when this invocation
    passes some; one stored before its config was recorded is checked on its overrides only.
    Overrides compare as written: the same ones in another order are refused."""
    for run in runs:
        if run["agent"] not in agents:
            continue
        agent, overrides = agents[run["agent"]]
        want = list(overrides)
        had = run.get("agent_overrides")
        if (had is None and want) or (had is not None and list(had) != want):
            shown = "not recorded" if had is None else (" ".join(had) or "none")
            raise ConfigError(
                f"{store}: run {comparison_key(run)} was made with agent overrides "
                f"{shown}, this invocation passes {' '.join(want) or 'none'}; {hint}"
            )
        if "agent_config" in run:
            cfg, _ = run_config(protocol, agent, run["seed"], run["zoo_seed"], run["level"], want)
            diffs = config_diffs(run["agent_config"], agent_config(cfg))
            if diffs:
                raise ConfigError(
                    f"{store}: run {comparison_key(run)} was made with another agent config "
                    f"than this invocation's (agent.{'; agent.'.join(diffs)}); pass --rerun or "
                    "another --out"
                )


# agent config keys that differ between the runs of one label by design
PER_RUN_AGENT_KEYS = ("seed", "level")


def read_store(store: Path, protocol: Mapping[str, Any]) -> list[dict]:
    """The finished runs in results.json; ConfigError if they were made under another protocol."""
    if not store.is_file():
        return []
    data = json.loads(store.read_text())
    if not isinstance(data, dict) or "protocol" not in data:
        raise ConfigError(f"{store}: written before protocols; pass --rerun or another --out")
    diffs = protocol_diffs(data["protocol"], protocol)
    if diffs:
        raise ConfigError(f"{store}: its runs were made under another protocol ({'; '.join(diffs)})"
                          "; pass --rerun or another --out")  # fmt: skip
    return list(data["runs"])


# the protocol keys that parallel invocations of one comparison split between them
SPLIT_KEYS = ("zoo_seeds", "search_seeds")


def _union(values: Sequence[Any]) -> list[Any]:
    """``values`` without repeats, sorted (numbers by value, anything else by its repr), so a
    merge gives the same protocol whatever the order of its folders."""
    seen = list(dict.fromkeys(values))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in seen)
    return sorted(seen) if numeric else sorted(seen, key=repr)


def seed_list(values: Sequence[Any]) -> str:
    """A protocol override's list of seeds (``None`` as ``null``), as ``--set`` takes it."""
    return "[" + ",".join("null" if v is None else str(v) for v in values) + "]"


def merge_stores(
    folders: Sequence[Path], key: Callable[[Mapping[str, Any]], tuple]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One protocol and one list of runs from the results.json of several invocations of one
    comparison that split its zoo or search seeds (one process per seed, or another machine):
    the protocol with the seeds of every store (its overrides say so), every run once (``key``
    names a run: ``comparison_key`` or ablate_ppo's ``variant_key``).

    ConfigError naming the file: a folder without a readable results.json, a store made under
    another protocol (its seeds aside), a run lacking what names it or its figures, a run held
    twice (in one store, or in two with other figures or settings).
    """
    if not folders:
        raise ConfigError("--merge: name at least one folder holding a results.json")
    protocol: dict[str, Any] | None = None
    first: Path | None = None
    runs: list[dict[str, Any]] = []
    seen: dict[tuple, tuple[Path, tuple]] = {}
    made_with: dict[str, tuple[Path, list[str]]] = {}  # label -> (store, agent overrides)
    configs: dict[str, tuple[Path, dict]] = {}  # label -> (store, agent config but per-run keys)
    for folder in folders:
        store = Path(folder) / "results.json"
        try:
            data = json.loads(store.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{store}: cannot read the results to merge ({err})") from err
        if (not isinstance(data, dict) or not isinstance(data.get("protocol"), dict)
                or not isinstance(data.get("runs"), list)):  # fmt: skip
            raise ConfigError(f"{store}: not a results.json of compare_agents or ablate_ppo")
        theirs = data["protocol"]
        bad = [k for k in SPLIT_KEYS if not isinstance(theirs.get(k), list)]
        if bad:
            raise ConfigError(f"{store}: its protocol has no list of {' or '.join(bad)}")
        if protocol is None:
            protocol, first = dict(theirs), store
        else:
            diffs = protocol_diffs(
                {k: v for k, v in protocol.items() if k not in SPLIT_KEYS},
                {k: v for k, v in theirs.items() if k not in SPLIT_KEYS},
            )
            if diffs:
                raise ConfigError(f"{store}: made under another protocol than {first} "
                                  f"({'; '.join(diffs)})")  # fmt: skip
            for k in SPLIT_KEYS:
                protocol[k] = _union([*protocol[k], *theirs[k]])
        in_store: set[tuple] = set()
        for i, run in enumerate(data["runs"]):
            try:
                name = key(run)
                figures = (run["hv"], run["hv_test"], run.get("settings"))
            except (KeyError, TypeError) as err:
                raise ConfigError(f"{store}: run #{i} lacks {err} (a store of the other "
                                  "command, compare_agents or ablate_ppo?)") from err  # fmt: skip
            if name in in_store:
                raise ConfigError(f"{store}: run {name} is in it twice")
            if run.get("agent_overrides") is not None:
                had = made_with.setdefault(run["agent"], (store, list(run["agent_overrides"])))
                if had[1] != list(run["agent_overrides"]):
                    raise ConfigError(
                        f"{store}: run {name} was made with agent overrides "
                        f"{' '.join(run['agent_overrides']) or 'none'}, its label's runs in "
                        f"{had[0]} with {' '.join(had[1]) or 'none'}; merge one of them"
                    )
            if isinstance(run.get("agent_config"), dict):
                mine = {k: v for k, v in run["agent_config"].items()
                        if k not in PER_RUN_AGENT_KEYS}  # fmt: skip
                first_store, first = configs.setdefault(run["agent"], (store, mine))
                diffs = config_diffs(first, mine)
                if diffs:
                    raise ConfigError(
                        f"{store}: run {name} was made with another agent config than its "
                        f"label's runs in {first_store} (agent.{'; agent.'.join(diffs)}); "
                        "merge one of them"
                    )
            in_store.add(name)
            if name in seen:
                if seen[name][1] != figures:
                    raise ConfigError(f"{store}: run {name} is in {seen[name][0]} too, with "
                                      "other figures or settings; merge one of them")  # fmt: skip
                continue
            seen[name] = (store, figures)
            runs.append(run)
    assert protocol is not None
    split = [o for o in protocol.get("overrides", [])
             if o.split("=", 1)[0].lstrip("+~") not in SPLIT_KEYS]  # fmt: skip
    protocol["overrides"] = [*split, *(f"{k}={seed_list(protocol[k])}" for k in SPLIT_KEYS)]
    return protocol, runs


def comparison_key(run: Mapping[str, Any]) -> tuple:
    """What names one run of a comparison."""
    return (run["zoo_seed"], run["agent"], run["level"], run["seed"])


def missing_runs(
    protocol: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], names: Sequence[str],
    key: Callable[[Mapping[str, Any]], tuple],
) -> list[tuple]:  # fmt: skip
    """The (zoo seed, name, level, search seed) of the protocol that ``runs`` lack, for each of
    ``names`` (agents or variants): a merge of stores one of which never finished."""
    have = {key(r) for r in runs}
    return [(z, name, level, s) for name in names for z in protocol["zoo_seeds"]
            for level in protocol["levels"] for s in protocol["search_seeds"]
            if (z, name, level, s) not in have]  # fmt: skip


def refuse_unknown(names: Sequence[str] | None, found: Sequence[str], flag: str) -> None:
    """ConfigError for names of ``flag`` that no merged run has."""
    absent = [n for n in names or () if n not in found]
    if absent:
        raise ConfigError(f"{flag}: no merged run of {', '.join(absent)} "
                          f"(the stores hold {', '.join(found)})")  # fmt: skip


# --- statistics, table, figures -------------------------------------------------------------


def compare(
    runs: Sequence[Mapping[str, Any]], budget: float, baselines: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Per (zoo seed, level): every agent's search and test hypervolume (mean, 95 % bootstrap
    interval), its mean curve with a bootstrap band, its rank tests against the best baseline (the
    baseline of highest mean search hypervolume; baselines: ``baselines``, else every agent not
    named ppo*) on the search and the test split, unpaired (``vs_best``, ``vs_best_test``) and
    paired by search seed (``vs_best_paired``: runs of one seed share the proposals and anchors,
    so their hypervolumes are correlated and the signed-rank test is the design's), and the
    evaluations its mean curve needs to reach each baseline's final mean. The best baseline is
    chosen on the same data, and no p is corrected for the several agents tested against it."""
    grid = np.arange(0, int(budget) + 1)
    out = []
    for zoo_seed, level in sorted({(r["zoo_seed"], r["level"]) for r in runs}, key=str):
        group = [r for r in runs if r["zoo_seed"] == zoo_seed and r["level"] == level]
        by: dict[str, list] = {}
        for r in sorted(group, key=lambda r: r["seed"]):
            by.setdefault(r["agent"], []).append(r)
        rows: dict[str, dict] = {}
        for agent, rs in by.items():
            curves = np.stack([stats.curve_on_grid(r["curve"], grid) for r in rs])
            low, high = stats.bootstrap_band(curves)
            rows[agent] = {
                "seeds": [r["seed"] for r in rs],
                "search": vars(stats.summarise([r["hv"] for r in rs])),
                "test": vars(stats.summarise([r["hv_test"] for r in rs])),
                "curve": {"mean": curves.mean(0).tolist(), "low": low.tolist(),
                          "high": high.tolist()},
                "passed": rs[0].get("passed", {}),
            }  # fmt: skip
        base = [a for a in by if (a in baselines if baselines else not a.startswith("ppo"))]
        best = max(base, key=lambda a: rows[a]["search"]["mean"]) if base else None
        for agent, row in rows.items():
            if best is not None and agent != best:
                finals = [[r["hv"] for r in by[a]] for a in (agent, best)]
                if min(map(len, finals)) > 1:  # a rank test needs two seeds a side
                    row["vs_best"] = {"baseline": best, **vars(stats.rank_test(*finals))}
                    tests = [[r["hv_test"] for r in by[a]] for a in (agent, best)]
                    row["vs_best_test"] = {"baseline": best, **vars(stats.rank_test(*tests))}
                # runs of one search seed share its proposals and anchors: paired runs
                common = {r["seed"] for r in by[agent]} & {r["seed"] for r in by[best]}
                if len(common) > 1:
                    row["vs_best_paired"] = {
                        split: vars(stats.signed_rank(*({r["seed"]: r[key] for r in by[a]}
                                                        for a in (agent, best))))
                        for split, key in (("search", "hv"), ("test", "hv_test"))
                    }  # fmt: skip
            mean_curve = np.asarray(row["curve"]["mean"])
            reach = {b: stats.first_reach(mean_curve, grid, rows[b]["search"]["mean"])
                     for b in base if b != agent}  # fmt: skip
            row["evals_to_reach"] = {b: (None if np.isinf(v) else v) for b, v in reach.items()}
        out.append({
            "zoo_seed": zoo_seed, "level": level, "budget": budget, "best_baseline": best,
            "agents": rows,
            "references": {"search": group[0]["references_hv"],
                           "test": group[0]["references_hv_test"]},
        })  # fmt: skip
    return out


def comparison_table(comparison: Mapping[str, Any], protocol: Mapping[str, Any]) -> Table:
    """The comparison of one (zoo seed, level): one row per agent, then the references."""
    best = comparison["best_baseline"]
    table = Table(title=(
        f"protocol {protocol['name']} ({protocol['purpose']}) · zoo seed {comparison['zoo_seed']}"
        f" · level {comparison['level']} · budget {comparison['budget']} · "
        f"best baseline {best or '-'}"))  # fmt: skip
    for col in ("agent", "n", "search HV mean [95% CI]", "test HV mean [95% CI]",
                "p vs best baseline, search (MWU; perm.)", "p vs best, test (MWU; perm.)",
                "paired by seed: p signed-rank search; test (higher/n)",
                "evals to reach baseline's final HV"):  # fmt: skip
        table.add_column(col)
    for agent, row in comparison["agents"].items():
        none = "(best)" if agent == best else "-"
        vs, vt, pv = row.get("vs_best"), row.get("vs_best_test"), row.get("vs_best_paired")
        paired = "; ".join(f"{t['p_signed_rank']:.3g} ({t['a_higher']}/{len(t['seeds'])})"
                           for t in (pv["search"], pv["test"])) if pv else none  # fmt: skip
        reach = ", ".join(f"{b} {'never' if v is None else int(v)}"
                          for b, v in row["evals_to_reach"].items())  # fmt: skip
        table.add_row(agent, str(row["search"]["n"]), stats.format_ci(row["search"]),
                      stats.format_ci(row["test"]), stats.format_p(vs) if vs else none,
                      stats.format_p(vt) if vt else none, paired,
                      reach or "-")  # fmt: skip
    refs = comparison["references"]
    table.add_row("references (inputs)", "-", f"{refs['search']:.5f}", f"{refs['test']:.5f}",
                  "-", "-", "-", "-")  # fmt: skip
    return table


def unsupported_notes(comparison: Mapping[str, Any], protocol: Mapping[str, Any]) -> list[str]:
    """One sentence per protocol switch some agents of the comparison had no setting for."""
    notes = []
    unsupported = {k for row in comparison["agents"].values()
                   for k, v in row["passed"].items() if v == "unsupported"}  # fmt: skip
    for key in sorted(unsupported):
        agents = [
            a for a, row in comparison["agents"].items() if row["passed"].get(key) == "unsupported"
        ]
        notes.append(f"note: protocol.{key}={protocol[key]} but {', '.join(agents)} "
                     f"have no agent.{key} setting: they ran without it")  # fmt: skip
    return notes


def print_table(
    comparison: Mapping[str, Any], protocol: Mapping[str, Any], path: Path | None = None
) -> None:
    """Print the comparison table of one (zoo seed, level) and its notes; ``path``: also write
    them there, 200 columns wide (a terminal, or a log, squeezes the table to its width)."""
    table, notes = comparison_table(comparison, protocol), unsupported_notes(comparison, protocol)
    for item in (table, *notes):
        console.print(item)
    if path is not None:
        write_wide(path, table, *notes)


def plot_curves(comparison: Mapping[str, Any], path: Path) -> None:
    """Hypervolume against evaluations: mean over seeds, 95 % bootstrap band, the references."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for agent, row in comparison["agents"].items():
        c, curve = _color(agent), row["curve"]
        grid = np.arange(len(curve["mean"]))
        ax.plot(grid, curve["mean"], c=c, label=f"{agent} (n={row['search']['n']})")
        ax.fill_between(grid, curve["low"], curve["high"], color=c, alpha=0.15)
    ax.axhline(comparison["references"]["search"], ls="--", c="k", lw=1,
               label="single models + plain merges")  # fmt: skip
    ax.set_xlabel("evaluations spent")
    ax.set_ylabel("hypervolume (scores / ideal point, ref 0)")
    ax.set_title(f"zoo seed {comparison['zoo_seed']}, level={comparison['level']}: mean, 95% CI")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fronts(results: list[dict], zoo_seed: Any, level: str, path: Path) -> None:
    """Pairwise projections of every agent's final front (first seed), with the single models."""
    runs = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        if r["level"] == level and r["zoo_seed"] == zoo_seed:
            runs.setdefault(r["agent"], r)
    if not runs:
        return
    any_run = next(iter(runs.values()))
    names = any_run["objectives"]
    pairs = list(itertools.combinations(range(len(names)), 2)) or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        for agent, r in runs.items():
            f = np.asarray(r["front"]).reshape(-1, len(names))
            ax.scatter(f[:, i], f[:, j], s=18, c=_color(agent), alpha=0.7, label=agent)
        for ref, v in any_run["references"].items():
            if ref.startswith("model:"):
                ax.scatter(v[i], v[j], marker="*", s=120, c="k")
                ax.annotate(ref.split(":", 1)[1], (v[i], v[j]), fontsize=7)
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"final fronts (seed {any_run['seed']}), zoo seed {zoo_seed}, level={level}; "
                 "stars: single models")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(comparisons: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Final search hypervolume per agent for each level (mean, 95 % bootstrap interval)."""
    agents = sorted({a for c in comparisons for a in c["agents"]})
    levels = [lv for lv in ("param", "arch", "both") if any(c["level"] == lv for c in comparisons)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / max(len(levels), 1)
    for k, level in enumerate(levels):
        comp = next(c for c in comparisons if c["level"] == level)
        for i, agent in enumerate(agents):
            if agent not in comp["agents"]:
                continue
            s = comp["agents"][agent]["search"]
            ax.bar(i + k * width, s["mean"], width,
                   yerr=[[s["mean"] - s["low"]], [s["high"] - s["mean"]]],
                   color=f"C{k}", label=level if i == 0 else None)  # fmt: skip
    ax.set_xticks(np.arange(len(agents)) + width * (len(levels) - 1) / 2, agents)
    ax.set_ylabel("final hypervolume (95% CI)")
    ax.set_title(f"ablation: which level is searched (zoo seed {comparisons[0]['zoo_seed']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command ----------------------------------------------------------------------------


def legacy_overrides(args: argparse.Namespace) -> list[str]:
    """The older flags (--budget, --seeds, --levels, --zoo, --cheap-examples) as protocol
    overrides, so they are recorded with the protocol they change."""
    out = []
    if args.budget is not None:
        out.append(f"budget={args.budget:g}")
    if args.seeds is not None:
        out.append(f"search_seeds=[{','.join(map(str, args.seeds))}]")
    if args.levels is not None:
        out.append(f"levels=[{','.join(args.levels)}]")
    if args.zoo is not None:
        out += ["pool=zoo", f"++pool_settings.preset={args.zoo}"]
    if args.cheap_examples is not None:
        out.append(f"fidelity.cheap_examples={args.cheap_examples}")
    return out


def write_store(
    store: Path, protocol: Mapping, runs: list, comparisons: list | None,
    merged_from: Sequence[Path] = (), missing: Sequence[tuple] = (),
) -> dict:  # fmt: skip
    """results.json: the protocol, the commit of this invocation, every run, the statistics
    (``merged_from``: the stores a ``--merge`` read its runs from, each run keeping the commit
    it ran at; ``missing``: the runs of the merged protocol none of them held)."""
    data = {"protocol": protocol, "commit": git_commit(), "runs": runs,
            "comparisons": comparisons}  # fmt: skip
    if merged_from:
        data["merged_from"] = [str(Path(f) / "results.json") for f in merged_from]
        data["missing"] = [list(m) for m in missing]
    tmp = store.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(store)
    return data


def merge_flags_refused(args: argparse.Namespace, flags: Mapping[str, Any]) -> None:
    """ConfigError when ``--merge`` comes with a flag that would change the protocol or the runs:
    a merge takes both from its stores."""
    given = [flag for flag, value in flags.items()
             if value is not None and value is not False and value not in ([], "")]  # fmt: skip
    if given:
        raise ConfigError(f"--merge takes the protocol and the runs from its folders; drop "
                          f"{', '.join(given)}")  # fmt: skip
    if args.out is None:
        raise ConfigError("--merge: name the folder the merged results go to with --out")
    if any(Path(f).resolve() == args.out.resolve() for f in args.merge):
        raise ConfigError(f"--merge: --out {args.out} is one of the folders merged; its "
                          "results.json would be overwritten")  # fmt: skip
    store = args.out / "results.json"
    if holds_own_runs(store):
        raise ConfigError(f"--merge: {store} holds runs of its own (no merged_from); "
                          "a merge would overwrite them: name another --out")  # fmt: skip


def holds_own_runs(store: Path) -> bool:
    """Whether ``store`` (a results.json) exists and was not written by ``--merge``: a merge into
    its folder would overwrite runs made there (an unreadable file counts as such)."""
    if not store.is_file():
        return False
    try:
        return "merged_from" not in json.loads(store.read_text())
    except (OSError, json.JSONDecodeError, TypeError):
        return True


def found_names(runs: Sequence[Mapping[str, Any]], field: str) -> list[str]:
    """Each run's ``field`` (agent or variant), every name once, in the order first seen."""
    return list(dict.fromkeys(r[field] for r in runs))


def load_merge(
    args: argparse.Namespace, flags: Mapping[str, Any], key: Callable[[Mapping[str, Any]], tuple],
    field: str, chosen: Sequence[str] | None, flag: str,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[str], list[tuple]]:  # fmt: skip
    """A command's ``--merge``: its ``flags`` refused, the stores merged, the names (each run's
    ``field``: agent or variant) ``chosen`` by ``flag`` or else every one found, and the runs of
    the merged protocol none of the stores holds (printed: their statistics have fewer seeds)."""
    merge_flags_refused(args, flags)
    protocol, runs = merge_stores(args.merge, key)
    found = found_names(runs, field)
    refuse_unknown(chosen, found, flag)
    names = list(chosen or found)
    missing = missing_runs(protocol, runs, names, key)
    if missing:
        console.print(f"[bold yellow]{len(missing)} run(s) of the merged protocol are not in "
                      "the stores[/bold yellow] (zoo seed, name, level, search seed): "
                      + ", ".join(map(str, missing)))  # fmt: skip
    return protocol, runs, names, missing


def write_wide(path: Path, *items: Any) -> None:
    """``items`` (rich tables, lines) written to ``path`` 200 columns wide, uncoloured: a
    terminal, or a log, squeezes a table to its width."""
    with path.open("w") as fh:
        wide = Console(file=fh, width=200, no_color=True)
        for item in items:
            wide.print(item)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every missing (zoo seed, agent, level, seed) of the protocol, then print the tables,
    write the figures and results.json; returns what results.json holds. ``--merge DIR...``: no
    runs, the stores of several invocations of one comparison analysed together into ``--out``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocol", default=None, help="conf/protocol/<name>.yaml (default tuning)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the protocol, e.g. budget=100 zoo_seeds=[1]")  # fmt: skip
    p.add_argument("--agents", nargs="+", default=None,
                   help="default ppo cmaes nsga2 random; with --merge, every agent found")  # fmt: skip
    p.add_argument("--baselines", nargs="*", default=None,
                   help="agents counted as baselines (default: every agent not named ppo*)")  # fmt: skip
    p.add_argument("--budget", type=float, default=None, help="protocol override")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="protocol override")
    p.add_argument("--levels", nargs="+", default=None, choices=["both", "param", "arch"])
    p.add_argument("--zoo", default=None, help="protocol override: pool=zoo with this preset")
    p.add_argument("--cheap-examples", type=int, default=None, help="protocol override")
    p.add_argument("--out", type=Path, default=None,
                   help="default outputs/compare_agents/<protocol>")  # fmt: skip
    p.add_argument("--ppo-override", nargs="*", default=[],
                   help="Hydra overrides for PPO only, e.g. agent.bc_epochs=50")  # fmt: skip
    p.add_argument("--tag", default="", help="suffix of PPO's label (keeps variants apart)")
    p.add_argument("--rerun", action="store_true", help="ignore finished runs in results.json")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="run nothing: analyse the runs in DIR/results.json (one protocol, its "
                        "seeds split between the folders) together into --out")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    git_commit()  # pinned now: the runs record the code this process started with
    if args.merge is not None:
        protocol, runs, labels, missing = load_merge(args, {
            "--protocol": args.protocol, "--set": args.set, "--budget": args.budget,
            "--seeds": args.seeds, "--levels": args.levels, "--zoo": args.zoo,
            "--cheap-examples": args.cheap_examples, "--ppo-override": args.ppo_override,
            "--tag": args.tag, "--rerun": args.rerun,
        }, comparison_key, "agent", args.agents, "--agents")  # fmt: skip
        refuse_unknown(args.baselines, found_names(runs, "agent"), "--baselines")
        return analyse(protocol, runs, labels, args.baselines, args.out, args.merge, missing)
    protocol = load_protocol(args.protocol or "tuning", [*legacy_overrides(args), *args.set])
    out = args.out or Path("outputs/compare_agents") / protocol["name"]
    agents = args.agents or ["ppo", "cmaes", "nsga2", "random"]
    labels = [a + args.tag if a == "ppo" else a for a in agents]
    overrides = {"ppo": args.ppo_override}
    preflight(protocol, agents, labels, overrides)
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    runs = [] if args.rerun else read_store(store, protocol)
    check_resumed_runs(store, runs, protocol, {label: (agent, overrides.get(agent, ()))
                                               for agent, label in zip(agents, labels)})  # fmt: skip
    done = {comparison_key(r) for r in runs}
    for zoo_seed, level, (agent, label), seed in itertools.product(
        protocol["zoo_seeds"], protocol["levels"], zip(agents, labels),
        protocol["search_seeds"],
    ):  # fmt: skip
        if (zoo_seed, label, level, seed) in done:
            continue
        console.print(f"[bold]{label}[/bold] zoo seed {zoo_seed} level={level} seed={seed} "
                      f"budget={protocol['budget']}")  # fmt: skip
        r = run_one(protocol, agent, seed, zoo_seed, level, out, overrides.get(agent, ()), label)
        console.print(f"  hv {r['hv']:.5f} (test {r['hv_test']:.5f})  spent {r['spent']:.2f}  "
                      f"entries {r['entries']}  wall {r['wall_s']:.0f} s")  # fmt: skip
        if len(r["hv_by_source"]) > 1:
            console.print("  hypervolume by archive source: " + ", ".join(
                f"{k} {v:.5f}" for k, v in r["hv_by_source"].items()))  # fmt: skip
        if r["phases"]:
            console.print("  evaluations per phase: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["phases"].items()))  # fmt: skip
        runs.append(r)
        write_store(store, protocol, runs, None)
    return analyse(protocol, runs, labels, args.baselines, out)


def analyse(
    protocol: Mapping[str, Any], runs: list[dict], labels: Sequence[str],
    baselines: Sequence[str] | None, out: Path, merged_from: Sequence[Path] = (),
    missing: Sequence[tuple] = (),
) -> dict[str, Any]:  # fmt: skip
    """The statistics of the runs of ``labels``: tables printed, figures and results.json in
    ``out`` (made only once the runs pass the checks); returns what results.json holds."""
    chosen = [r for r in runs if r["agent"] in labels]
    if not chosen:
        raise ConfigError(f"no runs of {', '.join(labels)} to compare")
    check_one_space(chosen)  # the runs as recorded, resumed ones included
    comparisons = compare(chosen, protocol["budget"], baselines)
    out.mkdir(parents=True, exist_ok=True)
    for c in comparisons:
        stem = f"z{c['zoo_seed']}_{c['level']}"
        print_table(c, protocol, out / f"comparison_{stem}.md")
        plot_curves(c, out / f"hv_curve_{stem}.png")
        plot_fronts(chosen, c["zoo_seed"], c["level"], out / f"fronts_{stem}.png")
    for zoo_seed in protocol["zoo_seeds"]:
        per_level = [c for c in comparisons if c["zoo_seed"] == zoo_seed]
        if len(per_level) > 1:
            plot_ablation(per_level, out / f"ablation_z{zoo_seed}.png")
    console.print(f"figures and results in {out}")
    return write_store(out / "results.json", protocol, runs, comparisons, merged_from, missing)


if __name__ == "__main__":
    exit_on_error(main)
