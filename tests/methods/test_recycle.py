"""Checkpoint recycling: simplex weights, baselines on stubs and real pools, the search, the job."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from agents.cmaes import CMAESAgent
from agents.genome import Genome, PoolFacts
from agents.nsga2 import NSGA2Agent
from merge_env.errors import ConfigError, RecipeError
from merge_env.methods.recycle import (
    RecyclingProblem,
    active_count,
    baselines,
    checkpoint_folders,
    folder_pool,
    greedy_soup,
    linear_recipe,
    merge_weights,
    objective_value,
    problem_objective,
    recycling_checkpoints,
    recycling_problem,
)
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import Recipe, param_merge
from tests.conftest import build_tiny

torch.set_num_threads(1)
CONF = str(Path(__file__).resolve().parents[2] / "conf")
NAMES = ["a", "b", "c", "d"]


# -- weights -------------------------------------------------------------------------------------
def test_genome_weights_stay_on_the_simplex():
    genome = Genome(PoolFacts(tuple(NAMES), 2), level="param", merge_method="linear",
                    weights="simplex")  # fmt: skip
    rng = np.random.default_rng(0)
    X = np.vstack([genome.sample(rng, 50), np.zeros(4), [0, 0, 0, 1], [2.0, -1.0, 0.5, 0.5]])
    for x in X:
        recipe = genome.decode(x)
        assert recipe.path is None and recipe.merge.merge_method == "linear"
        w = merge_weights(recipe, NAMES)
        assert set(w) == set(NAMES)
        assert min(w.values()) >= 0 and sum(w.values()) == pytest.approx(1.0)
    assert merge_weights(genome.decode(genome.identity()), NAMES) == pytest.approx(
        dict.fromkeys(NAMES, 0.25)
    )


def test_linear_recipe_round_trips_and_rejects_bad_weights():
    w = merge_weights(linear_recipe({"a": 2.0, "b": 0.0, "c": 6.0}), NAMES)
    assert w == pytest.approx({"a": 0.25, "b": 0.0, "c": 0.75, "d": 0.0})
    assert linear_recipe({"b": 3.0, "c": 0.0}) == Recipe.single("b")
    assert merge_weights(Recipe.single("base"), NAMES)["a"] == 1.0  # base aliases the first
    for bad in ({"a": -1.0, "b": 2.0}, {"a": 0.0}, {"a": float("nan")}):
        with pytest.raises(ConfigError):
            linear_recipe(bad)
    with pytest.raises(RecipeError, match="not linear"):
        merge_weights(Recipe(merge=param_merge("ties", {"a": 1.0}, density=0.5)), NAMES)
    with pytest.raises(RecipeError, match="not among"):
        merge_weights(linear_recipe({"a": 1.0, "zz": 1.0}), NAMES)
    assert active_count({"a": 0.9, "b": 0.06, "c": 0.02, "d": 0.02}) == 2  # 1/(10N) = 0.025


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ({"merge": {"merge_method": "linear", "parameters": {"normalize": False},
                    "models": [{"model": "a", "parameters": {"weight": 0.5}},
                               {"model": "b", "parameters": {"weight": 0.5}}]}}, "unnormalised"),
        ({"merge": {"merge_method": "linear",
                    "models": [{"model": "a", "parameters": {"weight": [0.2, 0.8]}},
                               {"model": "b", "parameters": {"weight": 0.5}}]}}, "one number"),
        ({"merge": {"merge_method": "linear",
                    "models": [{"model": "a", "parameters": {"weight": -0.5}},
                               {"model": "b", "parameters": {"weight": 1.5}}]}}, "non-negative"),
        ({"merge": {"merge_method": "linear",
                    "models": [{"model": "a", "parameters": {"weight": 0.5}},
                               {"model": "b", "parameters": {"weight": 0.5}}]}, "shell": "c"},
         "shell"),
    ],
)  # fmt: skip
def test_what_is_not_a_recycling_merge_is_skipped_not_fatal(recipe, match):
    # an archive shared with another recipe space: best_entry skips these entries
    from experiments.recycle import is_recycling_merge
    from merge_env.search.archive import Entry

    r = Recipe.from_dict(recipe)
    with pytest.raises(RecipeError, match=match):
        merge_weights(r, NAMES)
    entry = Entry(0, r.hash, r.to_dict(), {"t": 0.5}, None, 1, "test")
    assert not is_recycling_merge(entry, NAMES)


def test_a_baseline_tied_or_above_on_the_search_split_is_named():
    from experiments.recycle import not_above_on_search

    values = {"best single": 0.5, "greedy": 0.7, "uniform": 0.72, "optimised": 0.7}
    assert not_above_on_search(values) == {"greedy": "tied", "uniform": "below"}
    values["optimised"] = 0.75
    assert not_above_on_search(values) == {}


def test_figures_count_distinct_merges_and_search_standing():
    from experiments.figures import recycle_markdown

    def run(seed, recipe, optimised, greedy):
        rows = {
            k: {
                "search": {"macro": v, "norm_macro": v},
                "test": {"macro": 0.5, "norm_macro": 0.5},
                "active": 1,
            }
            for k, v in (("best single", 0.1), ("greedy", greedy), ("optimised", optimised))
        }
        return {
            "zoo_seed": 1,
            "seed": seed,
            "recipe": recipe,
            "rows": rows,
            "metric": "exact_match",
            "objective": "macro",
            "optimised_beats_baselines_test": False,
        }

    runs = [run(100, "r1", 0.8, 0.8), run(101, "r1", 0.8, 0.8), run(102, "r2", 0.7, 0.8)]
    text = "\n".join(recycle_markdown({"runs": runs}, {}))
    assert "2 distinct merge(s) over the 3 runs (the runs are not independent replicates)" in text
    assert "below greedy in 1, tied with greedy in 2 of the 3 runs" in text


def test_the_job_searches_continuous_weights_by_default():
    # the env's default lattice (sixths) holds at most 6 of 7 checkpoints, each at >= 1/6
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("recycle", overrides=["run_name=x"])
    assert cfg.env.weights == "simplex" and cfg.agent.weights == "simplex"


# -- baselines on a stub objective ---------------------------------------------------------------
SOUPS = {  # macro-average of the uniform soup over each support
    "a": 0.5, "b": 0.4, "c": 0.3, "d": 0.2,
    "ab": 0.55, "abc": 0.50, "abd": 0.60, "abcd": 0.45,
}  # fmt: skip


def _stub(calls: list[str]):
    def objective(weights):
        support = "".join(sorted(n for n, v in weights.items() if v > 0))
        assert all(v == pytest.approx(1 / len(support)) for v in weights.values() if v > 0)
        calls.append(support)
        return SOUPS[support]

    return objective


def test_greedy_soup_adds_by_score_while_the_soup_does_not_drop():
    calls: list[str] = []
    soup = greedy_soup({n: SOUPS[n] for n in "dcab"}, _stub(calls))
    assert calls == ["ab", "abc", "abd"]  # b, c, d tried in order of their single scores
    assert soup.weights == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 0.0, "d": 1 / 3})
    assert soup.value == 0.60
    assert [(n, kept) for n, _, kept in soup.trace] == [("a", True), ("b", True), ("c", False),
                                                        ("d", True)]  # fmt: skip
    # Wortsman et al. keep an ingredient that leaves the held-out score unchanged
    tie = greedy_soup({"a": 0.5, "b": 0.4}, lambda w: 0.5)
    assert tie.weights == pytest.approx({"a": 0.5, "b": 0.5})


def test_baselines_best_single_uniform_greedy():
    rows = baselines(NAMES, _stub([]))
    assert rows["best single"].weights == {"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}
    assert rows["best single"].value == 0.5
    assert rows["uniform"].weights == pytest.approx(dict.fromkeys(NAMES, 0.25))
    assert rows["uniform"].value == 0.45
    assert rows["greedy"].value == 0.60 and active_count(rows["greedy"].weights) == 3


# -- the objective -------------------------------------------------------------------------------
class _Ideal:
    """A stand-in problem whose ideal point is (0.5, 0.2)."""

    ideal = np.array([0.5, 0.2])

    def __init__(self, objective: str = "macro") -> None:
        self.objective = objective

    def normalised(self, vector):
        return np.asarray(vector, float) / self.ideal


def test_objectives_and_the_cmaes_fitness_hook():
    vector = np.array([0.4, 0.1])
    assert objective_value(_Ideal(), vector) == pytest.approx(0.25)  # plain macro by default
    assert objective_value(_Ideal(), vector, "normalised") == pytest.approx((0.8 + 0.5) / 2)
    with pytest.raises(ConfigError, match="objective"):
        objective_value(_Ideal(), vector, "hypervolume")
    agent = CMAESAgent(seed=0, level="param", merge_method="linear")
    # CMA-ES ranks by the problem's fitness: by default the normalised macro-average; the
    # recycling problem hands it the job's objective, the plain one unless told otherwise
    assert agent.uses_fitness
    assert MergeProblem.fitness(_Ideal(), vector) == pytest.approx(0.65)
    assert RecyclingProblem.fitness(_Ideal("macro"), vector) == pytest.approx(0.25)
    assert MergeProblem.fitness(_Ideal(), vector) == pytest.approx(0.65)  # other problems untouched
    assert RecyclingProblem.fitness(_Ideal("normalised"), vector) == pytest.approx(0.65)
    assert not NSGA2Agent(seed=0).uses_fitness  # multi-objective: no fitness to use


# -- real pools ----------------------------------------------------------------------------------
@pytest.fixture
def junk_pool(tiny_zoo, tmp_path):
    """The tiny zoo's trained base, and two copies of it ruined by heavy noise."""
    good = tiny_zoo.base
    return {
        "junk1": build_tiny(tmp_path / "junk1", like=good, seed=1, noise=0.3),
        "good": good,
        "junk2": build_tiny(tmp_path / "junk2", like=good, seed=2, noise=0.3),
    }


def _problem(folders, tiny_zoo, tmp_path):
    return recycling_problem(
        folders, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, archive_path=tmp_path / "a.jsonl",
        cache_path=tmp_path / "c.sqlite", metric="token_accuracy",
    )  # fmt: skip


def test_dominant_checkpoint_gets_the_largest_weight_within_budget(junk_pool, tiny_zoo, tmp_path):
    problem = _problem(junk_pool, tiny_zoo, tmp_path)
    assert problem.pool.experts == ["junk1", "good", "junk2"]
    agent = CMAESAgent(seed=0, level="param", merge_method="linear", weights="simplex", popsize=6)
    assert problem.objective == "macro"  # the problem's fitness, which CMA-ES maximises
    agent.search(problem, 30)
    # CMA-ES ranked by the plain macro-average: its best is the archive's best by that number
    plain = [float(np.mean(e.vector(problem.objectives))) for e in problem.archive]
    assert agent.best_value == pytest.approx(max(plain))
    assert problem.spent <= 30 + 1e-9
    assert 0 < len(problem.archive) <= 30
    best = merge_weights(agent.best_recipe, list(junk_pool))
    assert max(best, key=best.get) == "good"
    assert best["good"] > 0.6
    for entry in problem.archive:
        w = merge_weights(entry.recipe, list(junk_pool))
        assert sum(w.values()) == pytest.approx(1.0) and min(w.values()) >= 0


def test_baselines_on_a_hand_made_pool(junk_pool, tiny_zoo, tmp_path):
    problem = _problem(junk_pool, tiny_zoo, tmp_path)
    objective = problem_objective(problem, "macro")
    rows = baselines(list(junk_pool), objective)
    assert rows["best single"].weights["good"] == 1.0
    # every junk checkpoint hurts the soup, so greedy keeps the good one alone
    assert rows["greedy"].weights == {"good": 1.0, "junk1": 0.0, "junk2": 0.0}
    assert [kept for _, _, kept in rows["greedy"].trace] == [True, False, False]
    # the uniform baseline is the problem's own plain linear merge, scored the same way
    uniform = problem.score(problem.reference_recipes()["merge:linear"], record=False,
                            charge=False).vector  # fmt: skip
    assert rows["uniform"].value == pytest.approx(float(np.mean(uniform)))
    assert rows["uniform"].value < rows["best single"].value
    assert problem.spent == 0  # baselines are not charged to a search budget


def test_recycling_problem_references_are_the_checkpoints(junk_pool, tiny_zoo, tmp_path):
    problem = _problem(junk_pool, tiny_zoo, tmp_path)
    refs = problem.reference_recipes()
    assert list(refs) == ["model:junk1", "model:good", "model:junk2", "merge:linear"]
    assert merge_weights(refs["merge:linear"], list(junk_pool)) == pytest.approx(
        dict.fromkeys(junk_pool, 1 / 3)
    )
    singles = np.stack([v for k, v in problem.references().items() if k.startswith("model:")])
    np.testing.assert_array_equal(problem.ideal, singles.max(axis=0))  # as scored, unfloored
    assert problem.spent == 0 and len(problem.archive) == 0


def test_folder_pool_and_its_errors(tiny_zoo, tmp_path):
    folders = [str(p) for p in tiny_zoo.recycling[:3]]
    pool = folder_pool(folders)
    names = [Path(p).name for p in folders]
    assert list(recycling_checkpoints(pool)) == names
    assert pool.sources["base"] == Path(folders[0])  # the layout reference
    assert list(checkpoint_folders({"x": folders[0], "y": folders[1]})) == ["x", "y"]
    with pytest.raises(ConfigError, match="two checkpoints named"):
        checkpoint_folders([folders[0], folders[0]])
    with pytest.raises(ConfigError, match="at least 2"):
        checkpoint_folders(folders[:1])
    with pytest.raises(ConfigError, match="no config.json"):
        checkpoint_folders([folders[0], str(tmp_path)])
    with pytest.raises(ConfigError, match="reserved"):
        checkpoint_folders({"base": folders[0], "y": folders[1]})


# -- the job -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("agent", "objective"), [("cmaes", "macro"), ("nsga2", "macro"), ("cmaes", "normalised")]
)
def test_recycle_job_end_to_end(tiny_zoo, tmp_path, agent, objective):
    from experiments.recycle import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("recycle", overrides=[
            "pool=tiny", f"pool.cache_dir={tiny_zoo.root.parent}", f"agent={agent}", "budget=10",
            "evaluator.metric=token_accuracy", "run_name=test", f"run_dir={tmp_path / 'run'}",
            *(["agent.pop_size=4"] if agent == "nsga2" else ["agent.popsize=5"]),
            *([] if objective == "macro" else [f"objective={objective}"]),  # macro: the default
        ])  # fmt: skip
    test_macro = run(cfg)
    out = tmp_path / "run"
    summary = json.loads((out / "summary.json").read_text())
    assert (out / "weights.png").is_file() and (out / "optimised.yaml").is_file()
    assert summary["evaluations"] <= 10 + 1e-9
    rows = summary["rows"]
    assert set(rows) == {"best single", "uniform", "greedy", "optimised"}
    assert rows["optimised"]["test"]["macro"] == pytest.approx(test_macro)
    n = len(tiny_zoo.recycling)
    for row in rows.values():
        assert sum(row["weights"].values()) == pytest.approx(1.0)
        assert row["active"] == sum(w > 1 / (10 * n) for w in row["weights"].values())
    # the optimised merge is the archive's best by the search objective: the plain macro-average
    # by default, the macro-average of score / z* with objective=normalised
    assert summary["objective"] == objective
    # CMA-ES searched on the objective itself; NSGA-II has no scalar fitness to hand it
    assert summary["agent_fitness"] == (objective if agent == "cmaes" else None)
    column = "macro" if objective == "macro" else "norm_macro"
    tasks = [t.name for t in tiny_zoo.tasks]
    ideal = np.array([max(s["search"][t] for s in summary["singles"].values()) for t in tasks])
    if objective == "macro":
        ideal = np.ones(len(tasks))
    archive = [json.loads(line) for line in (out / "archive.jsonl").read_text().splitlines()]
    assert 0 < len(archive) <= 10
    best = max(np.mean([e["scores"][t] for t in tasks] / ideal) for e in archive)
    assert rows["optimised"]["search"][column] == pytest.approx(best)
    # the greedy soup starts from the best single checkpoint and never falls below it
    assert rows["greedy"]["search"][column] >= rows["best single"]["search"][column]
    front = json.loads((out / "front_test.json").read_text())
    assert summary["front"]["size"] == len(front) >= 1
    assert (out / "front.png").is_file() and (out / "hypervolume.png").is_file()


def test_unknown_objective_is_a_config_error(tmp_path):
    from experiments.recycle import run

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("recycle", overrides=["objective=hypervolume", "run_name=bad",
                                            f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"objective \(conf/recycle.yaml\)"):
        run(cfg)


def test_own_checkpoints_and_jsonl_tasks_are_a_config_away(tiny_zoo, tmp_path):
    """pool=recycling + tasks=jsonl, as documented; the optimised merge written as Σ α_i θ_i."""
    from experiments.recycle import run
    from merge_env.merging.checkpoint import Checkpoint

    files = {}
    for task in tiny_zoo.tasks[:2]:
        files[task.name] = tmp_path / f"{task.name}.jsonl"
        rows = [*task.split("search"), *task.split("test")]
        files[task.name].write_text(
            "".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in rows)
        )
    ckpts = {f"c{i}": p for i, p in enumerate(tiny_zoo.recycling[:3])}
    folders = "{" + ", ".join(f"{k}: {v}" for k, v in ckpts.items()) + "}"
    tasks = "{" + ", ".join(f"{k}: {v}" for k, v in files.items()) + "}"
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("recycle", overrides=[
            "pool=recycling", f"pool.checkpoints={folders}", "tasks=jsonl", f"tasks.files={tasks}",
            "tasks.metric=token_accuracy", "budget=6", "agent=random", "agent.batch_size=3",
            "agent.level=param", "materialise=true", "run_name=own", f"run_dir={tmp_path / 'run'}",
        ])  # fmt: skip
    run(cfg)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["checkpoints"] == ["c0", "c1", "c2"]
    assert set(summary["rows"]["optimised"]["search"]) >= set(files)
    assert summary["evaluations"] <= 6 + 1e-9
    alpha = summary["rows"]["optimised"]["weights"]
    merged = Checkpoint(summary["checkpoint"]).state_dict()
    states = {k: Checkpoint(p).state_dict() for k, p in ckpts.items()}
    for name in ("model.embed_tokens.weight", "model.layers.1.mlp.up_proj.weight"):
        expected = sum(alpha[k] * states[k][name].double() for k in ckpts)
        torch.testing.assert_close(merged[name].double(), expected, atol=1e-6, rtol=1e-5)


def test_recycle_resume_refuses_another_objective(tiny_zoo, tmp_path):
    from experiments.recycle import run

    def cfg(*overrides):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose("recycle", overrides=[
                "pool=tiny", f"pool.cache_dir={tiny_zoo.root.parent}", "agent=random", "budget=3",
                "agent.batch_size=3", "evaluator.metric=token_accuracy", "run_name=r",
                f"run_dir={tmp_path / 'run'}", *overrides,
            ])  # fmt: skip

    run(cfg())
    before = (tmp_path / "run" / "archive.jsonl").read_text()
    with pytest.raises(ConfigError, match='resume refused.*objective: "macro" -> "normalised"'):
        run(cfg("objective=normalised"))
    assert (tmp_path / "run" / "archive.jsonl").read_text() == before
