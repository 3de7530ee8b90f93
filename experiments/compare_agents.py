"""Compare agents on one zoo: hypervolume against evaluations spent, final fronts, level ablation.

    python -m experiments.compare_agents --budget 200 --seeds 0 1 2 \
        [--agents ppo cmaes nsga2 random] [--levels both param arch] [--zoo default] [--out DIR]

Every (agent, level, seed) run gets a fresh problem with its own archive and evaluation cache, so
no agent profits from another's evaluations. Agents are built from ``conf/agent/<name>.yaml``
through Hydra's compose API (the same config the main job uses). Finished runs are kept in
``DIR/results.json`` and skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from hydra import compose, initialize  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from merge_env.pools.spec import zoo_problem  # noqa: E402

log = logging.getLogger("mergegym.compare")
console = Console()
COLORS = {"ppo": "tab:red", "cmaes": "tab:blue", "nsga2": "tab:green", "random": "tab:gray"}


def _color(label: str) -> str | None:
    return COLORS.get(label, COLORS["ppo"] if label.startswith("ppo") else None)


def make_agent(name: str, seed: int, level: str, overrides: Sequence[str] = ()) -> Any:
    """The agent of ``conf/agent/<name>.yaml`` at this seed and search level."""
    with initialize(config_path="../conf", version_base=None):
        cfg = compose(
            config_name="config",
            overrides=[f"agent={name}", f"seed={seed}", f"agent.level={level}", *overrides],
        )
    return instantiate(cfg.agent)


def run_one(
    name: str, seed: int, level: str, budget: float, zoo: str, out: Path, cheap: int,
    overrides: Sequence[str] = (), label: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """One search on a fresh problem; its hypervolume curve, front and spending."""
    label = label or name
    folder = out / "runs" / f"{zoo}__{label}__{level}__{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    # a fresh run: the ledger too, or a rerun would start with the last run's spending
    for f in ("archive.jsonl", "cache.sqlite", "ledger.jsonl"):
        (folder / f).unlink(missing_ok=True)
    problem = zoo_problem(
        zoo, archive_path=folder / "archive.jsonl", cache_path=folder / "cache.sqlite",
        cheap_examples=cheap,
    )  # fmt: skip
    problem.references()  # the ideal point; never charged to the agent
    agent = make_agent(name, seed, level, overrides)
    t0 = time.perf_counter()
    agent.search(problem, budget)
    archive = problem.archive
    front = np.array([e.vector(problem.objectives) for e in archive.front()])
    return {
        "agent": label, "seed": seed, "level": level, "budget": budget,
        "spent": problem.spent, "entries": len(archive), "cache_hits": problem.cache_hits,
        "wall_s": time.perf_counter() - t0,
        "curve": problem.hypervolume_curve(),
        "hv": problem.hypervolume_of(archive.score_matrix()) if len(archive) else 0.0,
        "front": front.tolist(), "objectives": problem.objectives,
        "references": {k: v.tolist() for k, v in problem.references().items()},
        "ideal": problem.ideal.tolist(),
        "phases": dict(getattr(agent, "phase_spend", {}) or {}),
        "hv_by_source": hv_by_source(problem),
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


def curve_on_grid(curve: Sequence[Sequence[float]], grid: np.ndarray) -> np.ndarray:
    """The hypervolume reached by each evaluation count of ``grid`` (a step function)."""
    out = np.zeros(len(grid))
    for evals, hv in curve:
        out[grid >= evals] = np.maximum(out[grid >= evals], hv)
    return out


def summarise(results: list[dict], budget: float) -> tuple[dict, np.ndarray]:
    """Mean/min/max hypervolume curves per (agent, level) on a grid of evaluations."""
    grid = np.arange(0, int(budget) + 1)
    groups: dict[tuple[str, str], list[np.ndarray]] = {}
    for r in results:
        groups.setdefault((r["agent"], r["level"]), []).append(curve_on_grid(r["curve"], grid))
    stats = {k: np.stack(v) for k, v in groups.items()}
    return stats, grid


def first_reach(curve: np.ndarray, grid: np.ndarray, target: float) -> float:
    """The first evaluation count at which ``curve`` reaches ``target`` (inf if never)."""
    hit = np.flatnonzero(curve >= target - 1e-12)
    return float(grid[hit[0]]) if len(hit) else float("inf")


def print_table(stats: dict, grid: np.ndarray) -> None:
    """Final hypervolume per agent and level, and when PPO reaches each baseline's final value."""
    table = Table(title="final hypervolume (mean ± std over seeds)")
    for col in ("agent", "level", "seeds", "HV mean", "HV std", "evals to reach it (mean curve)"):
        table.add_column(col)
    for (agent, level), curves in sorted(stats.items()):
        final = curves[:, -1]
        table.add_row(agent, level, str(len(final)), f"{final.mean():.5f}", f"{final.std():.5f}",
                      str(first_reach(curves.mean(0), grid, final.mean())))  # fmt: skip
    console.print(table)
    for level in sorted({lv for _, lv in stats}):
        for ppo_label in sorted({a for a, lv in stats if lv == level and a.startswith("ppo")}):
            ppo = stats[(ppo_label, level)].mean(0)
            for (agent, lv), curves in sorted(stats.items()):
                if lv == level and not agent.startswith("ppo"):
                    target = curves[:, -1].mean()
                    at = first_reach(ppo, grid, target)
                    console.print(f"[{level}] {ppo_label} reaches {agent}'s final HV {target:.5f} after "
                              f"{at} evaluations ({at / grid[-1]:.0%} of the budget)")  # fmt: skip


def plot_curves(stats: dict, grid: np.ndarray, level: str, path: Path) -> None:
    """Hypervolume against evaluations: mean over seeds, min-max band."""
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for (agent, lv), curves in sorted(stats.items()):
        if lv != level:
            continue
        c = _color(agent)
        ax.plot(grid, curves.mean(0), c=c, label=f"{agent} (n={len(curves)})")
        ax.fill_between(grid, curves.min(0), curves.max(0), color=c, alpha=0.15)
    ax.set_xlabel("evaluations spent")
    ax.set_ylabel("hypervolume (scores / ideal point, ref 0)")
    ax.set_title(f"hypervolume vs evaluations, level={level}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_fronts(results: list[dict], level: str, path: Path) -> None:
    """Pairwise projections of every agent's final front (first seed), with the single models."""
    runs = {}
    for r in sorted(results, key=lambda r: r["seed"]):
        if r["level"] == level:
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
    fig.suptitle(f"final fronts (seed {any_run['seed']}), level={level}; stars: single models")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_ablation(stats: dict, path: Path) -> None:
    """Final hypervolume per agent for each search level (mean, min-max error bars)."""
    agents = sorted({a for a, _ in stats})
    levels = [lv for lv in ("param", "arch", "both") if any(lv == x for _, x in stats)]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    width = 0.8 / max(len(levels), 1)
    for k, level in enumerate(levels):
        for i, agent in enumerate(agents):
            if (agent, level) not in stats:
                continue
            final = stats[(agent, level)][:, -1]
            ax.bar(i + k * width, final.mean(), width,
                   yerr=[[final.mean() - final.min()], [final.max() - final.mean()]],
                   color=f"C{k}", label=level if i == 0 else None)  # fmt: skip
    ax.set_xticks(np.arange(len(agents)) + width * (len(levels) - 1) / 2, agents)
    ax.set_ylabel("final hypervolume")
    ax.set_title("ablation: which level is searched")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict]:
    """Run every missing (agent, level, seed), then print the table and write the figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=200)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--agents", nargs="+", default=["ppo", "cmaes", "nsga2", "random"])
    p.add_argument("--levels", nargs="+", default=["both"], choices=["both", "param", "arch"])
    p.add_argument("--zoo", default="default")
    p.add_argument("--cheap-examples", type=int, default=16)
    p.add_argument("--out", type=Path, default=Path("outputs/compare_agents"))
    p.add_argument("--ppo-override", nargs="*", default=[],
                   help="Hydra overrides for PPO only, e.g. agent.bc_epochs=50")  # fmt: skip
    p.add_argument("--tag", default="", help="suffix of PPO's label (keeps variants apart)")
    p.add_argument("--rerun", action="store_true", help="ignore finished runs in results.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.json"
    results = [] if args.rerun or not store.is_file() else json.loads(store.read_text())
    done = {(r["agent"], r["level"], r["seed"], r["budget"]) for r in results}
    labels = [a + args.tag if a == "ppo" else a for a in args.agents]
    for level, (agent, label), seed in itertools.product(
        args.levels, zip(args.agents, labels), args.seeds
    ):
        if (label, level, seed, args.budget) in done:
            continue
        console.print(f"[bold]{label}[/bold] level={level} seed={seed} budget={args.budget}")
        overrides = args.ppo_override if agent == "ppo" else []
        r = run_one(agent, seed, level, args.budget, args.zoo, args.out, args.cheap_examples,
                    overrides, label)  # fmt: skip
        console.print(f"  hv {r['hv']:.5f}  spent {r['spent']:.2f}  entries {r['entries']}  "
                      f"wall {r['wall_s']:.0f} s")  # fmt: skip
        if len(r["hv_by_source"]) > 1:
            console.print("  hypervolume by archive source: " + ", ".join(
                f"{k} {v:.5f}" for k, v in r["hv_by_source"].items()))  # fmt: skip
        if r["phases"]:
            console.print("  evaluations per phase: " + ", ".join(
                f"{k} {v:.1f}" for k, v in r["phases"].items()))  # fmt: skip
        results.append(r)
        store.write_text(json.dumps(results))
    results = [r for r in results if r["budget"] == args.budget and r["agent"] in labels]
    stats, grid = summarise(results, args.budget)
    print_table(stats, grid)
    for level in args.levels:
        plot_curves(stats, grid, level, args.out / f"hv_curve_{level}.png")
        plot_fronts(results, level, args.out / f"fronts_{level}.png")
    if len(args.levels) > 1:
        plot_ablation(stats, args.out / "ablation.png")
    console.print(f"figures and results in {args.out}")
    return results


if __name__ == "__main__":
    main()
