"""Multi-objective baselines (MOEA/D, preference-restarted CMA-ES, MOTPE) on the tiny zoo."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from pymoo.core.problem import Problem

from agents.base import Agent
from agents.mo_cmaes import MOCMAESAgent
from agents.moead import MOEADAgent, weight_vectors
from agents.tpe import TPEAgent
from merge_env.errors import ConfigError
from merge_env.search.budget import Budget
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import Recipe

CONF = Path(__file__).resolve().parents[2] / "conf"
BUDGET = 7

# small generations so that a budget of 7 spans several and cuts the last one short; the
# services off (the plain algorithms are under test; test_services_* below switch them on)
PLAIN = {"anchors": False, "screening": False}
AGENTS = {
    # 3 tasks, steps of 1/2: 6 subproblems
    "moead": lambda seed, **kw: MOEADAgent(
        seed=seed, n_partitions=2, n_neighbors=3, **{**PLAIN, **kw}
    ),
    "mo_cmaes": lambda seed, **kw: MOCMAESAgent(
        seed=seed, popsize=3, n_preferences=2, **{**PLAIN, **kw}
    ),
    "tpe": lambda seed, **kw: TPEAgent(
        seed=seed, batch_size=3, n_startup_trials=2, **{**PLAIN, **kw}
    ),
}


@pytest.fixture(scope="module")
def runs(fresh_problem) -> dict[tuple[str, int], list[MergeProblem]]:
    """One search per (agent, seed) on a fresh problem, shared by the tests that read them."""
    out = {}
    for name in AGENTS:
        for seed in (0, 0, 1):
            problem = fresh_problem()
            AGENTS[name](seed, progress=False).search(problem, BUDGET)
            out.setdefault((name, seed), []).append(problem)
    return out


def _hashes(problem: MergeProblem) -> list[str]:
    return [e.recipe_hash for e in problem.archive]


@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_spends_exactly_its_budget_and_archives_what_it_scored(runs, name):
    problem = runs[(name, 0)][0]
    assert problem.spent == BUDGET
    assert problem.reference_evaluations == 0  # the references came with the copied cache
    entries = problem.archive.entries
    assert {e.source for e in entries} == {name}
    assert sum(not e.extra["cached"] for e in entries) == BUDGET  # one line per charged recipe
    for e in entries:
        recipe = Recipe.from_dict(e.recipe)
        assert recipe.hash == e.recipe_hash
        recipe.validate(problem.pool.names, problem.pool.num_layers)


@pytest.mark.parametrize("name", list(AGENTS))
def test_same_seed_same_archive_and_another_seed_another(runs, name):
    (a, b), (c,) = runs[(name, 0)], runs[(name, 1)]
    assert len(_hashes(a)) == BUDGET
    assert _hashes(a) == _hashes(b)
    assert _hashes(a) != _hashes(c)  # the seed reaches every random source


@pytest.mark.parametrize("name", list(AGENTS))
def test_the_front_has_positive_hypervolume(runs, name):
    problem = runs[(name, 0)][0]
    front = np.stack([e.vector(problem.objectives) for e in problem.archive.front()])
    assert problem.hypervolume_of(front) > 0.0
    assert problem.hypervolume_curve()[-1][1] == pytest.approx(problem.hypervolume_of(front))


@pytest.mark.parametrize(
    ("name", "cls"), [("moead", MOEADAgent), ("mo_cmaes", MOCMAESAgent), ("tpe", TPEAgent)]
)
def test_agent_configs_instantiate(name, cls):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    overrides = [f"agent={name}", "seed=3", "env.density=0.4", "env.scalarisation=weighted_sum"]
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
    agent = instantiate(cfg.agent)
    assert type(agent) is cls and agent.name == name and agent.seed == 3
    assert isinstance(agent, Agent) and not agent.uses_fitness  # judged on the front
    assert agent.genome_options["density"] == 0.4  # the genome reads the env's recipe space
    assert agent.genome_options["coefficients"] == tuple(cfg.env.coefficients)
    # the env's space and the services' defaults, as for every agent
    assert agent.genome_options["encoding"] == cfg.env.mode
    assert agent.genome_options["lattice_steps"] == cfg.env.lattice_steps
    assert agent.anchors and agent.screening
    if name == "mo_cmaes":
        assert agent.scalarisation == "weighted_sum"  # PPO's reward and this agent's agree


# level="param" on the continuous simplex: every genome is a distinct recipe (with paths or the
# weight lattice, two genomes can share one and the second is free), so the generations that fit
# in the budget are known in advance


def test_moead_uses_das_dennis_weights_and_does_not_tell_a_cut_generation(fresh_problem):
    w = weight_vectors(3, 4)
    assert w.shape == (15, 3) and np.allclose(w.sum(axis=1), 1.0)
    assert np.allclose(w * 4, np.round(w * 4))  # steps of 1/4
    agent = AGENTS["moead"](0, level="param", weights="simplex", progress=False)
    agent.search(fresh_problem(), BUDGET)
    assert agent.generations == 1  # the initial 6; the next 6 were cut at 1


def test_moead_restarts_a_population_that_only_repeats(fresh_problem, converged):
    # as NSGA-II's: without the restart the converged search spins until its proposal cap
    from agents.nsga2 import STALE_GENERATIONS

    problem = fresh_problem()
    agent = AGENTS["moead"](0, progress=False)  # 6 subproblems: the first generation spends 6
    agent.max_proposals = 6 * (STALE_GENERATIONS + 30)
    agent.search(problem, 8)
    assert agent.restarts == 1
    assert problem.spent == pytest.approx(8.0)
    assert agent.generations > STALE_GENERATIONS


def test_mo_cmaes_hands_each_preference_its_share_of_the_budget(fresh_problem):
    agent = AGENTS["mo_cmaes"](0, level="param", weights="simplex", progress=False)
    agent.search(fresh_problem(), 8)
    # 8 / 2 = 4 evaluations each: generations of 3 + 3 for the first (6 >= 4 hands over), 2 of 3
    # for the second (cut, not told)
    assert len(agent.preferences) == 2 and agent.generations == 2
    prefs = np.stack(agent.preferences)
    assert np.allclose(prefs.sum(axis=1), 1.0) and np.all(prefs >= 0)
    assert not np.allclose(prefs[0], prefs[1])


def test_mo_cmaes_warm_starts_from_the_best_genome_for_the_new_preference(fresh_problem):
    agent = AGENTS["mo_cmaes"](0, level="param", progress=False)
    genome = agent.genome(fresh_problem())
    X = [np.full(genome.dim, 0.2), np.full(genome.dim, 0.8)]
    F = [np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])]
    ideal = np.ones(3)
    picks = [agent._start_point(genome, np.array(p), ideal, (X, F)) for p in ([1, 0, 0], [0, 1, 0])]
    assert np.allclose(picks[0], X[0]) and np.allclose(picks[1], X[1])
    assert np.allclose(agent._start_point(genome, np.ones(3) / 3, ideal, ([], [])),
                       genome.identity())  # fmt: skip
    cold = AGENTS["mo_cmaes"](0, level="param", warm_start=False)
    assert np.allclose(cold._start_point(genome, np.array([1, 0, 0]), ideal, (X, F)),
                       genome.identity())  # fmt: skip


def test_tpe_tells_every_scored_trial_fails_the_cut_ones_and_logs_nothing(
    fresh_problem, caplog, capfd
):
    agent = AGENTS["tpe"](0, progress=False)
    problem = fresh_problem()
    with caplog.at_level(logging.INFO):
        agent.search(problem, BUDGET)
    states = [t.state.name for t in agent.study.trials]
    assert len(states) == 9  # three batches of 3, the last cut at 1
    assert states.count("COMPLETE") == BUDGET and states[-2:] == ["FAIL", "FAIL"]
    first = agent.study.trials[0]
    expected = problem.normalised(problem.archive.entries[0].vector(problem.objectives))
    assert np.allclose(first.values, expected)  # told the normalised score vector
    # optuna's own handler holds the stderr it found at import: read the file descriptor
    shown = capfd.readouterr().err + caplog.text
    assert "A new study created" not in shown and "Trial " not in shown


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: MOEADAgent(n_partitions=0), "n_partitions"),
        (lambda: MOEADAgent(n_neighbors=1), "n_neighbors"),
        (lambda: MOEADAgent(prob_neighbor_mating=1.5), "prob_neighbor_mating"),
        (lambda: MOCMAESAgent(n_preferences=0), "n_preferences"),
        (lambda: MOCMAESAgent(alpha=0), "alpha"),
        (lambda: MOCMAESAgent(scalarisation="chebyshev"), "scalarisation"),
        (lambda: MOCMAESAgent(popsize=1), "popsize"),
        (lambda: TPEAgent(batch_size=0), "batch_size"),
        (lambda: TPEAgent(level="everything"), "genome.level"),
    ],
)
def test_bad_settings_are_refused_by_name(make, key):
    with pytest.raises(ConfigError, match=f"agent.{key}|{key}"):
        make()


@pytest.mark.parametrize("name", list(AGENTS))
def test_services_on_the_anchors_come_first_and_the_front_holds_the_references(fresh_problem, name):
    problem, budget = fresh_problem(), 14  # the 8 anchors, then screened batches
    agent = AGENTS[name](0, anchors=True, screening=True, cheap_examples=4, progress=False)
    agent.search(problem, budget)
    # stops only when one more screened recipe (cheap + its promotion) would overrun
    unit = problem.cost("cheap") + problem.cost("full")
    assert budget - unit < problem.spent <= budget + 1e-9
    anchors = problem.anchor_recipes()
    entries = problem.archive.entries
    assert [e.recipe_hash for e in entries[: len(anchors)]] == [r.hash for r in anchors.values()]
    assert {e.source for e in entries[len(anchors) :]} == {name}
    fidelities = [json.loads(x)["fidelity"] for x in problem.ledger.path.read_text().splitlines()]
    assert "cheap" in fidelities  # batches were screened
    refs = np.stack(list(problem.references().values()))
    assert problem.hypervolume_of(problem.archive.score_matrix()) >= problem.hypervolume_of(refs)


def test_encodable_anchors_seed_each_agent(fresh_problem):
    problem = fresh_problem()
    # raw weights: the plain ties merge (weight 1 per expert) is a genome of this space
    space = {"weights": "box", "anchors": True, "progress": False}
    moead = AGENTS["moead"](0, **space)
    budget = Budget(problem, 20)
    genome = moead.genome(problem)
    seeds = [x for x, _ in moead.seed_genomes(problem, budget, genome)]
    assert seeds  # the plain merges the genome can encode
    algorithm = moead._algorithm(3, seeds, genome)
    algorithm.setup(Problem(n_var=genome.dim, n_obj=3, xl=0.0, xu=1.0), seed=0)
    X = algorithm.ask().get("X")  # the initial population pymoo will ask the problem to score
    assert len(X) == 6 and np.allclose(X[: len(seeds)], seeds)
    tpe = AGENTS["tpe"](0, **space)
    tpe.search(problem, 20)
    told = [t.values for t in tpe.study.trials[: len(seeds)]]
    expected = [
        problem.normalised(s.vector) for s in budget.anchors if genome.encode(s.recipe) is not None
    ]
    assert np.allclose(told, expected)  # the study starts from the anchors' full scores


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", list(AGENTS))
def test_a_search_shows_one_bar_in_evaluations(fresh_problem, name, monkeypatch):
    problem = fresh_problem()
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    AGENTS[name](0).search(problem, 2)
    assert f"{name} (evaluations)" in terminal.getvalue() and "/2 " in terminal.getvalue()
