"""Add the grid picked on search to main-job runs finished before it existed (session 28).

A main job's summary compares its front with the references + the plain TIES lattice
(`grid_hypervolume_test`), every grid point kept on TEST, while the front's points were picked on
SEARCH. `experiments.report.grid_summary` now also writes `grid_front_size` and
`grid_front_hypervolume_test`: the grid's points non-dominated on SEARCH, scored on TEST. This
script computes them from each run's own evaluation cache (no model is scored again), refuses a
run whose recomputed grid hypervolumes are not the stored ones, and adds the two keys to its
summary.json.

    python results/figures/regrid.py figures results/figures/smollm2   # a `make figures` folder
    python results/figures/regrid.py runs [pool=smollm2 ...] DIR_z<zoo seed>_s<seed> ...

`figures` also adds them to figures.json and redraws figures.md (the figures command's own writer).
`runs` (`experiments.run` folders named as `results/zoo_v5/collect_main.py` reads them; Hydra
overrides before them, e.g. `pool=smollm2`, the default zoo without) builds each run's problem
from the settings its run_state.json recorded and checks the pool's and tasks' fingerprints
against them; it prints, per zoo seed, the front's test margin over both grids.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from experiments import report
from experiments.figures import write
from experiments.jobs import read_state, search_settings
from experiments.protocol import compose_config, run_config
from experiments.run import make_problem
from merge_env.search.problem import MergeProblem

KEYS = ("grid_front_size", "grid_front_hypervolume_test")
_ABSENT = object()


def regrid(problem: MergeProblem, env: DictConfig, folder: Path) -> dict[str, Any]:
    """The run's summary.json with the two keys added (and written back); ``problem`` is the
    run's, on its folder's cache."""
    grid = report.grid_summary(problem, env, problem.references(),
                               report.reference_test_scores(problem))  # fmt: skip
    summary = json.loads((folder / "summary.json").read_text())
    for key in ("grid_merges", "grid_hypervolume_search", "grid_hypervolume_test"):
        if grid[key] != summary[key]:
            raise SystemExit(f"{folder}: {key} recomputed {grid[key]} != stored {summary[key]}")
    summary.update({k: grid[k] for k in KEYS})
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def figures(out: str) -> None:
    data = json.loads((Path(out) / "figures.json").read_text())
    for run in data["sections"]["main"]["result"]["runs"]:
        cfg, _ = run_config(data["protocol"], "ppo", run["seed"], run["zoo_seed"], "both",
                            ["logger=none"])  # fmt: skip
        folder = Path(run["folder"])
        run.update({k: regrid(make_problem(cfg, folder), cfg.env, folder)[k] for k in KEYS})
        print(f"zoo seed {run['zoo_seed']} seed {run['seed']}: front test "
              f"{run['hypervolume_test']:.4f}; references + grid, every point "
              f"{run['grid_hypervolume_test']:.4f}, the {run['grid_front_size']} picked on search "
              f"{run['grid_front_hypervolume_test']:.4f}")  # fmt: skip
    write(Path(out), data)


def runs(args: list[str]) -> None:
    overrides = [a for a in args if "=" in a]
    by_zoo: dict[int, list[dict[str, Any]]] = {}
    for d in (Path(a) for a in args if "=" not in a):
        m = re.search(r"_z(\d+)_s(\d+)$", d.name)
        if m is None:
            raise SystemExit(f"{d}: the folder name must end in _z<zoo seed>_s<search seed>")
        recorded = read_state(d)["search"]
        cfg = compose_config([*overrides, f"pool.seed={m[1]}", f"seed={m[2]}", "logger=none"])
        for key, value in recorded.items():
            if (
                key.startswith(("env.", "evaluator."))
                and OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT
            ):
                OmegaConf.update(cfg, key, value)
        problem_keys = ("pool", *(k for k in recorded if k.startswith("tasks.")))
        problem = make_problem(cfg, d)
        now = search_settings(cfg, problem)
        if any(now.get(k) != recorded[k] for k in problem_keys):
            raise SystemExit(f"{d}: its pool or tasks are not those of {overrides} seed {m[1]}")
        by_zoo.setdefault(int(m[1]), []).append(regrid(problem, cfg.env, d))
    print("| zoo seed | runs | test vs references + grid, every point: mean [min, max] (above) "
          "| vs the grid picked on search (above) | grid points picked |")  # fmt: skip
    print("|---|---|---|---|---|")
    for zoo, rs in sorted(by_zoo.items()):
        cells = []
        for key in ("grid_hypervolume_test", "grid_front_hypervolume_test"):
            margin = [100 * (r["hypervolume_test"] / r[key] - 1) for r in rs]
            cells.append(f"{statistics.mean(margin):+.1f} % [{min(margin):+.1f}, "
                         f"{max(margin):+.1f}] ({sum(x > 0 for x in margin)} of {len(rs)})")  # fmt: skip
        picked = sorted({r["grid_front_size"] for r in rs})
        print(f"| {zoo} | {len(rs)} | {cells[0]} | {cells[1]} | {picked} of "
              f"{rs[0]['grid_merges']} merges + the references |")  # fmt: skip


if __name__ == "__main__":
    {"figures": lambda a: figures(a[0]), "runs": runs}[sys.argv[1]](sys.argv[2:])
