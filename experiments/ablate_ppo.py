"""PPO's ablations in one command, at equal budget, under one comparison protocol (issue 15).

    python -m experiments.ablate_ppo --protocol tuning
    python -m experiments.ablate_ppo --protocol smoke --set budget=16 search_seeds=[0,1,2]
    python -m experiments.ablate_ppo --protocol tuning --variants full offline_only online_only
    python -m experiments.ablate_ppo --merge DIR_100 DIR_101 --out DIR   # seeds run apart

Every variant is the PPO agent under the protocol (experiments/protocol.py: the same budget,
fidelities, services, pool and seeds as in experiments/compare_agents.py, through its
``run_one``) with one change:

==============  ===========================================================================
full            offline pre-training + online learning: PPO and hindsight self-imitation
                (the configured agent)
offline_only    pre-trained, then no online update (the policy still spends the budget)
online_only     no pre-training (``bc_epochs=0``): the proposals are screened as for every agent
                (a protocol service), the policy is not cloned on them, offline or online
                (``sil_offline=false``: self-imitation reads only the archive's full scores);
                online learning from a fresh policy
ppo_only        online learning by PPO alone (``sil_epochs=0``: no self-imitation)
scalar_reward   the plain scalarised reward instead of the front-building one
continuous      continuous merge weights (``weights=simplex``, a Box action)
==============  ===========================================================================

The protocol's space check (``check_one_space``) is applied with each variant's own change left
out, so the variants differ in that one setting and nothing else. For each (zoo seed, level) it
prints and writes (``results.json``, ``ablation_z<seed>_<level>.md``): per variant the final
search hypervolume, mean [95 % bootstrap CI], and the two-sided Mann–Whitney p (and exact
permutation p) of full against it, and the two-sided Wilcoxon signed-rank p of full against it
over the seeds both ran, with the count of seeds where full is higher (experiments/stats.py). The
runs are paired by construction: a variant and full with the same search seed share the pool,
the proposals and, but for online_only, the offline phase, so the signed-rank test is the
design's (unpaired tests ignore that and lose power to the seed-to-seed spread both share). Per
run: the share of the budget spent by the policy's own episodes (sweeps + online) and by
fallbacks (promote + explore), whether the policy stalled, its online updates, and the
hypervolume of the policy's own episodes alone (archive source ``env``) against the final front's.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from experiments import stats
from experiments.compare_agents import (
    check_resumed_runs,
    load_merge,
    read_store,
    run_one,
    write_store,
    write_wide,
)
from experiments.protocol import check_one_space, git_commit, load_protocol
from merge_env.errors import ConfigError, exit_on_error

console = Console()
# variant -> (Hydra overrides of the PPO run, the settings keys it changes)
VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "full": ((), ()),
    "offline_only": (("agent.online_learning=false",), ()),
    "online_only": (("agent.bc_epochs=0", "agent.sil_offline=false"), ()),
    "ppo_only": (("agent.sil_epochs=0",), ()),
    "scalar_reward": (("agent.reward=scalar",), ("env.reward",)),
    "continuous": (("agent.weights=simplex",), ("env.weights", "agent.weights")),
}
POLICY_PHASES, FALLBACK_PHASES = ("sweep", "online"), ("promote", "explore")


def run_summary(run: Mapping[str, Any]) -> dict[str, Any]:
    """One run's spending shares, stall flag, online updates and the policy's own hypervolume."""
    phases, budget = run.get("phases", {}), float(run["budget"])
    online = run.get("online", {})
    policy_hv = run.get("hv_by_source", {}).get("env", 0.0)
    return {
        "policy_share": sum(phases.get(k, 0.0) for k in POLICY_PHASES) / budget,
        "fallback_share": sum(phases.get(k, 0.0) for k in FALLBACK_PHASES) / budget,
        "stalled": bool(online.get("stalled", False)), "updates": int(online.get("updates", 0)),
        "hv": run["hv"], "policy_hv": policy_hv,
        "policy_hv_ratio": policy_hv / run["hv"] if run["hv"] > 0 else 0.0,
    }  # fmt: skip


def check_variants(runs: Sequence[Mapping[str, Any]]) -> None:
    """The protocol's one-space check of each variant against full, its own change left out."""
    full = [r for r in runs if r["variant"] == "full"]
    for variant in sorted({r["variant"] for r in runs} - {"full"}):
        keys = VARIANTS[variant][1]
        check_one_space([
            {**r, "settings": {k: v for k, v in r["settings"].items() if k not in keys}}
            for r in [*full, *(r for r in runs if r["variant"] == variant)]
        ])  # fmt: skip


def ablate(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per (zoo seed, level): each variant's hypervolume summary, the rank test of full against
    it, and the mean, min and max of each per-run figure."""
    out = []
    for zoo_seed, level in sorted({(r["zoo_seed"], r["level"]) for r in runs}, key=str):
        group = [r for r in runs if (r["zoo_seed"], r["level"]) == (zoo_seed, level)]
        by: dict[str, list] = {}
        for r in sorted(group, key=lambda r: r["seed"]):
            by.setdefault(r["variant"], []).append(r)
        rows = {}
        for variant, rs in by.items():
            per_run = [run_summary(r) for r in rs]
            figures = {k: {"mean": float(sum(float(p[k]) for p in per_run) / len(per_run)),
                           "min": float(min(float(p[k]) for p in per_run)),
                           "max": float(max(float(p[k]) for p in per_run))}
                       for k in per_run[0]}  # fmt: skip
            rows[variant] = {"seeds": [r["seed"] for r in rs], "runs": per_run,
                             "search": vars(stats.summarise([r["hv"] for r in rs])),
                             "figures": figures}  # fmt: skip
            if variant != "full" and len(by.get("full", ())) > 1 and len(rs) > 1:  # 2 seeds a side
                full = [r["hv"] for r in by["full"]]
                rows[variant]["full_vs"] = vars(stats.rank_test(full, [r["hv"] for r in rs]))
            paired = {r["seed"] for r in by.get("full", ())} & {r["seed"] for r in rs}
            if variant != "full" and len(paired) > 1:  # the same seed: the same offline phase
                rows[variant]["full_vs_paired"] = vars(stats.signed_rank(
                    {r["seed"]: r["hv"] for r in by["full"]}, {r["seed"]: r["hv"] for r in rs}
                ))  # fmt: skip
        out.append({"zoo_seed": zoo_seed, "level": level, "variants": rows})
    return out


def table(ablation: Mapping[str, Any], protocol: Mapping[str, Any]) -> Table:
    """The ablation of one (zoo seed, level) as a table."""
    t = Table(title=f"PPO ablations · protocol {protocol['name']} · zoo seed "
                    f"{ablation['zoo_seed']} · level {ablation['level']} · budget "
                    f"{protocol['budget']}")  # fmt: skip
    for col in ("variant", "n", "search HV mean [95% CI]", "full vs it: p MWU; perm.",
                "paired by seed: p signed-rank (full higher)",
                "policy share", "fallback share", "stalled", "online updates mean (min)",
                "policy HV / final HV"):  # fmt: skip
        t.add_column(col)
    for variant, row in ablation["variants"].items():
        s, f, vs, pv = row["search"], row["figures"], row.get("full_vs"), row.get("full_vs_paired")
        t.add_row(
            variant, str(s["n"]), stats.format_ci(s),
            stats.format_p(vs) if vs else "-",
            f"{pv['p_signed_rank']:.3g} ({pv['a_higher']}/{len(pv['seeds'])})" if pv else "-",
            f"{f['policy_share']['mean']:.2f}", f"{f['fallback_share']['mean']:.2f}",
            f"{sum(r['stalled'] for r in row['runs'])}/{s['n']}",
            f"{f['updates']['mean']:.0f} ({f['updates']['min']:.0f})",
            f"{f['policy_hv_ratio']['mean']:.2f} (min {f['policy_hv_ratio']['min']:.2f})",
        )  # fmt: skip
    return t


def variant_key(run: Mapping[str, Any]) -> tuple:
    """What names one run of an ablation."""
    return (run["zoo_seed"], run["variant"], run["level"], run["seed"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run every missing (zoo seed, level, variant, seed), then print and write the ablation.
    ``--merge DIR...``: no runs, the stores of several invocations analysed together."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--protocol", default=None, help="conf/protocol/<name>.yaml (default tuning)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides of the protocol, e.g. budget=100 search_seeds=[0,1]")  # fmt: skip
    p.add_argument("--variants", nargs="+", default=None, choices=list(VARIANTS),
                   help="default every variant; with --merge, every variant found")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help="default outputs/ablate_ppo/<protocol>")  # fmt: skip
    p.add_argument("--rerun", action="store_true", help="ignore finished runs in results.json")
    p.add_argument("--merge", nargs="+", type=Path, default=None, metavar="DIR",
                   help="run nothing: analyse the runs in DIR/results.json (one protocol, its "
                        "seeds split between the folders) together into --out")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.variants is not None and "full" not in args.variants:
        raise ConfigError("--variants: the ablation compares against full; include it")
    git_commit()  # pinned now: the runs record the code this process started with
    if args.merge is not None:
        protocol, runs, variants, missing = load_merge(
            args, {"--protocol": args.protocol, "--set": args.set, "--rerun": args.rerun},
            variant_key, "variant", args.variants, "--variants",
        )  # fmt: skip
        return analyse(protocol, runs, variants, args.out, args.merge, missing)
    protocol = load_protocol(args.protocol or "tuning", args.set)
    variants = args.variants or list(VARIANTS)
    out = args.out or Path("outputs/ablate_ppo") / protocol["name"]
    out.mkdir(parents=True, exist_ok=True)
    store = out / "results.json"
    runs = [] if args.rerun else read_store(store, protocol)
    check_resumed_runs(store, runs, protocol, {f"ppo-{v}": ("ppo", VARIANTS[v][0])
                                               for v in variants},
                       "pass --rerun or another --out")  # fmt: skip
    done = {variant_key(r) for r in runs}
    for zoo_seed, level, variant, seed in itertools.product(
        protocol["zoo_seeds"], protocol["levels"], variants, protocol["search_seeds"]
    ):
        if (zoo_seed, variant, level, seed) in done:
            continue
        console.print(f"[bold]{variant}[/bold] zoo seed {zoo_seed} level={level} seed={seed}")
        r = run_one(protocol, "ppo", seed, zoo_seed, level, out, VARIANTS[variant][0],
                    f"ppo-{variant}")  # fmt: skip
        r["variant"] = variant
        s = run_summary(r)
        console.print(f"  hv {r['hv']:.5f}  policy share {s['policy_share']:.2f}  fallbacks "
                      f"{s['fallback_share']:.2f}  stalled {s['stalled']}  updates "
                      f"{s['updates']}  policy hv {s['policy_hv']:.5f}")  # fmt: skip
        runs.append(r)
        write_store(store, protocol, runs, None)
    return analyse(protocol, runs, variants, out)


def analyse(
    protocol: Mapping[str, Any], runs: list[dict], variants: Sequence[str], out: Path,
    merged_from: Sequence[Path] = (), missing: Sequence[tuple] = (),
) -> dict[str, Any]:  # fmt: skip
    """The ablation of the runs of ``variants``: tables printed and written to ``out`` (made only
    once the runs pass the checks) with results.json; returns what results.json holds."""
    chosen = [r for r in runs if r["variant"] in variants]
    if not any(r["variant"] == "full" for r in chosen):
        raise ConfigError("the ablation compares against full, and no run of full is there")
    unknown = sorted({r["variant"] for r in chosen} - set(VARIANTS))
    if unknown:
        raise ConfigError(f"runs of unknown variants {', '.join(unknown)} (known: "
                          f"{', '.join(VARIANTS)})")  # fmt: skip
    check_variants(chosen)
    result = ablate(chosen)
    out.mkdir(parents=True, exist_ok=True)
    for a in result:
        t = table(a, protocol)
        console.print(t)
        write_wide(out / f"ablation_z{a['zoo_seed']}_{a['level']}.md", t)
    console.print(f"results in {out}")
    return write_store(out / "results.json", protocol, runs, result, merged_from, missing)


if __name__ == "__main__":
    exit_on_error(main)
