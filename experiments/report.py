"""What a run leaves behind: the front on the test split, plots, best recipes per preference."""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

from merge_env.search.mergekit_export import mergekit_export

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402
from rich.text import Text  # noqa: E402

from merge_env.env import lattice_merges  # noqa: E402
from merge_env.errors import ConfigError, RecipeError  # noqa: E402
from merge_env.search.archive import Entry  # noqa: E402
from merge_env.search.pareto import non_dominated  # noqa: E402
from merge_env.search.problem import MergeProblem  # noqa: E402
from merge_env.search.recipe import Recipe  # noqa: E402

log = logging.getLogger(__name__)


def test_scores(problem: MergeProblem, entries: Sequence[Entry]) -> dict[str, np.ndarray]:
    """Test-split score vectors of archive entries (reporting only; never charged)."""
    out = {}
    for e in entries:
        recipe = Recipe.from_dict(e.recipe)
        out[e.recipe_hash] = problem.score(recipe, split="test", record=False, charge=False).vector
    return out


def reference_test_scores(problem: MergeProblem) -> dict[str, np.ndarray]:
    """Test-split scores of the single models and plain merges."""
    return {
        name: problem.score(r, split="test", record=False, charge=False).vector
        for name, r in problem.reference_recipes().items()
    }


def grid_scores(problem: MergeProblem, recipes: Sequence[Recipe], split: str) -> np.ndarray:
    """Score vectors of ``recipes`` on ``split``, reporting only: never charged nor archived.
    Call it after the search: a recipe it caches would be a free cache hit for an agent."""
    scored = problem.score_many(list(recipes), split=split, record=False, charge=False)
    return np.stack([s.vector for s in scored])


GRID_MAX = 64  # more lattice merges than this (e.g. 5 experts in sixths: 210) are not re-scored


def grid_summary(
    problem: MergeProblem, env: Mapping, refs: Mapping[str, np.ndarray],
    ref_tests: Mapping[str, np.ndarray], limit: int = GRID_MAX,
) -> dict[str, Any]:  # fmt: skip
    """The references plus every plain merge of the env's weight lattice, hypervolume on search
    and test (``grid_hypervolume_search`` / ``_test``, ``grid_merges``): what the search adds to a
    grid over the parameter-level merge alone. Scored after the search, uncharged. A lattice of
    more than ``limit`` merges is skipped (``grid_skipped`` says why), as its cost would rival the
    search's.

    ``grid_hypervolume_test`` keeps every grid point on test, so the test split picks the grid's
    front, while the search's front is picked on search. ``grid_front_hypervolume_test`` treats
    the grid as the search's front is treated: its points non-dominated on search
    (``grid_front_size``), scored on test."""
    missing = [k for k in ("merge_method", "lattice_steps", "density") if k not in env]
    if missing:  # no fallback values here: they would be copies of conf/env/default.yaml's
        raise ConfigError(f"env: the grid reference needs {', '.join(missing)}")
    merges = lattice_merges(env["merge_method"], list(problem.pool.experts),
                            int(env["lattice_steps"]), env["density"])  # fmt: skip
    grid = [Recipe(merge=m) for m in merges]
    if len(grid) > limit:
        return {"grid_merges": len(grid),
                "grid_skipped": f"{len(grid)} lattice merges > {limit}: not re-scored"}  # fmt: skip
    out: dict[str, Any] = {"grid_merges": len(grid)}
    vectors = {}
    for split, rows in (("search", refs), ("test", ref_tests)):
        vectors[split] = np.vstack([np.stack([rows[name] for name in refs]),
                                    grid_scores(problem, grid, split)])  # fmt: skip
        out[f"grid_hypervolume_{split}"] = problem.hypervolume_of(vectors[split])
    picked = non_dominated(vectors["search"])
    out["grid_front_size"] = int(picked.sum())
    out["grid_front_hypervolume_test"] = problem.hypervolume_of(vectors["test"][picked])
    return out


def front_plot(
    problem: MergeProblem,
    all_scores: np.ndarray,
    front: np.ndarray,
    references: Mapping[str, np.ndarray],
    path: Path,
    title: str,
) -> Path:
    """Pairwise scatter of every merge, the front, the single models and the plain merges."""
    names = problem.objectives
    pairs = list(itertools.combinations(range(len(names)), 2)) or [(0, 0)]
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.5), squeeze=False)
    for ax, (i, j) in zip(axes[0], pairs):
        if len(all_scores):
            ax.scatter(all_scores[:, i], all_scores[:, j], s=10, c="lightgray", label="merges")
        if len(front):
            order = np.argsort(front[:, i])
            ax.plot(front[order, i], front[order, j], "o-", c="tab:red", ms=4, label="front")
        for name, v in references.items():
            marker = "*" if name.startswith("model:") else "s"
            ax.scatter(v[i], v[j], marker=marker, s=90, edgecolors="k", label=name)
            ax.annotate(name.split(":", 1)[1], (v[i], v[j]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
        ax.set_xlabel(names[i])
        ax.set_ylabel(names[j])
    axes[0][0].legend(fontsize=6, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hypervolume_plot(
    curve: Sequence[tuple[int, float]], baselines: Mapping[str, float], path: Path, title: str
) -> Path:
    """Hypervolume of the archive's front against evaluations spent, with baseline lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        xs, ys = zip(*curve)
        ax.step(xs, ys, where="post", label="search")
    for (name, hv), color in zip(baselines.items(), itertools.cycle(["k", "gray", "tab:blue"])):
        ax.axhline(hv, ls="--", c=color, lw=1, label=name)
    ax.set_xlabel("evaluations spent")
    ax.set_ylabel("hypervolume (scores normalised: (f - nadir) / (z* - nadir))")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_best_recipes(
    problem: MergeProblem,
    preferences: np.ndarray,
    out_dir: Path,
    scalarisation: str = "tchebycheff",
) -> list[tuple[np.ndarray, Entry]]:
    """For each preference the archive's best recipe: YAML, and mergekit config where expressible.

    The mergekit file is named for the command that runs it: ``pref_NN.mergekit.yaml``
    (mergekit-yaml) or ``pref_NN.mergekit-multi.yaml`` (a parameter merge plus an inference path,
    as mergekit-multi's named stages); its first lines give the command, run in ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # absolute, so the exported commands run from the recipes folder whatever the launch folder
    paths = {name: str(Path(p).resolve()) for name, p in problem.pool.paths.items()}
    residual_out = problem.pool.arch.family.residual_out
    best = []
    for i, pref in enumerate(preferences):
        entry = problem.best(pref, scalarisation)
        recipe = Recipe.from_dict(entry.recipe)
        stem = f"pref_{i:02d}"
        title = f"preference {np.round(pref, 3).tolist()}  recipe {entry.recipe_hash}"
        (out_dir / f"{stem}.yaml").write_text(f"# {title}\n" + recipe.to_yaml())
        for old in (".mergekit.yaml", ".mergekit-multi.yaml", ".mergekit.txt"):
            (out_dir / f"{stem}{old}").unlink(missing_ok=True)  # a resumed run's other form
        try:
            export = mergekit_export(recipe, paths, problem.pool.num_layers, residual_out)
        except RecipeError as exc:
            (out_dir / f"{stem}.mergekit.txt").write_text(f"not expressible: {exc}\n")
        else:
            name = stem + export.suffix
            text = export.text(
                name, f"{stem}.merged", header=[title, "the command runs in this folder"]
            )
            (out_dir / name).write_text(text)
        best.append((pref, entry))
    return best


def front_table(
    problem: MergeProblem,
    front: Sequence[Entry],
    tests: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    ref_tests: Mapping[str, np.ndarray],
    console: Console | None = None,
) -> None:
    """Print the front (search and test scores) beside the single models and plain merges."""
    table = Table(title="Pareto front (search / test)")
    table.add_column("recipe")
    table.add_column("source")
    for name in problem.objectives:
        table.add_column(name, justify="right")
    table.add_column("path len", justify="right")
    for name, v in references.items():
        cells = [f"{a:.3f} / {b:.3f}" for a, b in zip(v, ref_tests[name])]
        table.add_row(name, "reference", *cells, "", style="dim")
    for e in front:
        recipe = Recipe.from_dict(e.recipe)
        cells = [
            f"{e.scores[n]:.3f} / {t:.3f}" for n, t in zip(problem.objectives, tests[e.recipe_hash])
        ]
        length = len(recipe.resolved_path(problem.pool.num_layers))
        table.add_row(e.recipe_hash, e.source, *cells, str(length))
    (console or Console()).print(table)


def save_front(path: Path, problem: MergeProblem, front: Sequence[Entry], tests: Mapping) -> None:
    """The front as JSON: recipe, search and test scores."""
    rows = [
        {
            "recipe_hash": e.recipe_hash,
            "source": e.source,
            "evaluations": e.evaluations,
            "search": e.scores,
            "test": dict(zip(problem.objectives, np.asarray(tests[e.recipe_hash]).tolist())),
            "recipe": e.recipe,
        }
        for e in front
    ]
    path.write_text(json.dumps(rows, indent=2))


def front_of(vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The non-dominated rows of a set of score vectors."""
    if not vectors:
        return np.zeros((0, 0))
    m = np.stack(list(vectors.values()))
    return m[non_dominated(m)]


def markdown_table(table: Table) -> str:
    """A rich Table as a Markdown table, its title in bold above it: the cells the console
    shows (markup rendered to plain text), for a file read on GitHub or pasted into a README."""

    def cell(x: object) -> str:
        text = x.plain if isinstance(x, Text) else Text.from_markup(str(x)).plain
        return text.replace("|", "\\|").replace("\n", " ")

    head = [cell(c.header) for c in table.columns]
    lines = [f"**{cell(table.title)}**", ""] if table.title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(cell, row)) + " |"
              for row in zip(*(list(c.cells) for c in table.columns))]  # fmt: skip
    return "\n".join(lines) + "\n"
