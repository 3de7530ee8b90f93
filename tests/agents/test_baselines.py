"""Black-box baselines (random search, CMA-ES, NSGA-II) on the tiny zoo: budget, archive, seeding."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.base import Agent
from agents.cmaes import CMAESAgent
from agents.nsga2 import NSGA2Agent
from agents.random_search import RandomSearch
from merge_env.errors import ConfigError
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import Recipe

CONF = Path(__file__).resolve().parents[2] / "conf"

# populations of 3 so that a budget of 5 spans two generations, the second one cut short;
# the services off (the plain algorithms are under test here; tests/agents/test_services.py)
PLAIN = {"anchors": False, "screening": False}
AGENTS = {
    "random": lambda seed, **kw: RandomSearch(seed=seed, batch_size=3, **{**PLAIN, **kw}),
    "cmaes": lambda seed, **kw: CMAESAgent(seed=seed, popsize=3, **{**PLAIN, **kw}),
    "nsga2": lambda seed, **kw: NSGA2Agent(seed=seed, pop_size=3, **{**PLAIN, **kw}),
}


@pytest.fixture(scope="module")
def problem(fresh_problem) -> MergeProblem:
    """One problem shared by this module's budget tests (budgets are counted from a start)."""
    return fresh_problem()


def _hashes(problem: MergeProblem, source: str) -> list[str]:
    return [e.recipe_hash for e in problem.archive if e.source == source]


@pytest.mark.parametrize("name", list(AGENTS))
def test_agent_spends_exactly_its_budget_and_archives_what_it_scored(problem, name):
    agent: Agent = AGENTS[name](0)
    spent, n_before = problem.spent, len(problem.archive)
    archive = agent.search(problem, 5)
    assert archive is problem.archive
    assert problem.spent - spent == 5
    new = problem.archive.entries[n_before:]
    assert {e.source for e in new} == {agent.name}
    assert sum(not e.extra["cached"] for e in new) == 5  # one archive line per charged recipe
    for e in new:
        recipe = Recipe.from_dict(e.recipe)
        assert recipe.hash == e.recipe_hash
        recipe.validate(problem.pool.names, problem.pool.num_layers)
        assert np.all(np.isfinite(e.vector(problem.objectives)))


def test_budget_is_checked_and_a_fraction_is_never_overrun(problem):
    with pytest.raises(ConfigError, match="budget"):
        RandomSearch().search(problem, 0)
    spent = problem.spent
    RandomSearch(seed=5, batch_size=2, **PLAIN).search(problem, 2.5)
    assert problem.spent - spent == 2  # a third evaluation would overrun 2.5


@pytest.mark.parametrize("name", list(AGENTS))
def test_same_seed_same_archive(fresh_problem, name):
    runs = []
    for _ in range(2):
        p, agent = fresh_problem(), AGENTS[name](7)
        agent.search(p, 5)
        runs.append(_hashes(p, agent.name))
        assert p.reference_evaluations == 0  # the references came with the copied cache
    assert len(runs[0]) == 5
    assert runs[0] == runs[1]


# level="param": every genome is a distinct recipe (with paths, two genomes can share one and the
# second is free), so the number of generations that fit in the budget is known in advance


def test_cmaes_starts_at_the_uniform_merge_tells_partial_generations_and_tracks_the_best(problem):
    agent = CMAESAgent(seed=2, popsize=3, level="param", weights="simplex", **PLAIN)
    n_before = len(problem.archive)
    agent.search(problem, 5)
    assert agent.generations == 2  # 3 + a partial 2 (>= mu = 1), told as well
    new = problem.archive.entries[n_before:]
    values = [problem.fitness(e.vector(problem.objectives)) for e in new]
    assert agent.best_value == pytest.approx(max(values))
    # sigma0 = 1/6 around the identity genome: every sample stays near the uniform weights
    first = Recipe.from_dict(new[0].recipe)
    weights = [m.parameters["weight"] for m in first.merge.models]
    assert max(weights) < 0.9


def test_nsga2_does_not_tell_a_cut_generation(problem):
    agent = NSGA2Agent(seed=4, pop_size=3, level="param", weights="simplex", **PLAIN)
    agent.search(problem, 5)
    assert agent.generations == 1  # the initial 3; the next 3 were cut at 2


def test_nsga2_restarts_a_population_that_only_repeats(fresh_problem, converged):
    # without the restart the converged search spins until its proposal cap, unspent
    from agents.nsga2 import STALE_GENERATIONS

    problem = fresh_problem()
    agent = NSGA2Agent(seed=0, pop_size=3, progress=False, **PLAIN)
    agent.max_proposals = 3 * (STALE_GENERATIONS + 30)
    agent.search(problem, 6)
    assert agent.restarts == 1
    assert problem.spent == pytest.approx(6.0)
    assert agent.generations > STALE_GENERATIONS


def test_genome_options_pass_through_agents(problem):
    agent = RandomSearch(seed=0, level="param", encoding="indicator", density_genes=True)
    genome = agent.genome(problem)
    assert (genome.level, genome.encoding, genome.density_genes) == ("param", "indicator", True)
    assert genome.dim == 2 * len(problem.pool.experts)
    with pytest.raises(ConfigError, match="genome.level"):
        CMAESAgent(level="everything")
    with pytest.raises(ConfigError, match="pop_size"):
        NSGA2Agent(pop_size=1)


@pytest.mark.parametrize(
    ("name", "cls"), [("random", RandomSearch), ("cmaes", CMAESAgent), ("nsga2", NSGA2Agent)]
)
def test_agent_configs_instantiate(name, cls):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"agent={name}", "seed=3", "env.density=0.4"])
    agent = instantiate(cfg.agent)
    assert type(agent) is cls and agent.name == name and agent.seed == 3
    assert agent.genome_options["density"] == 0.4  # the genome reads the env's recipe space
    assert agent.genome_options["coefficients"] == tuple(cfg.env.coefficients)
    # the env's space: its mode, lattice and param mode (env=aligned: the aligned space)
    assert agent.genome_options["encoding"] == cfg.env.mode == "free"
    assert agent.genome_options["weights"] == "lattice"
    assert agent.genome_options["lattice_steps"] == cfg.env.lattice_steps
    assert agent.anchors and agent.screening  # the services' defaults, equal for every agent
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"agent={name}", "env=aligned"])
    assert instantiate(cfg.agent).genome_options["encoding"] == "aligned"


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that tqdm draws."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("name", list(AGENTS))
def test_a_search_shows_one_bar_in_evaluations_and_no_loading_bars(
    fresh_problem, name, monkeypatch
):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    problem = fresh_problem()  # loads every pool model: transformers' bars would show here
    AGENTS[name](0).search(problem, 4)
    shown = terminal.getvalue()
    assert "Loading weights" not in shown
    assert f"{name} (evaluations)" in shown and "/4 " in shown and "eval" in shown


@pytest.mark.parametrize("name", list(AGENTS))
def test_no_bar_when_off_or_not_on_a_terminal(problem, name, monkeypatch):
    for stream, kwargs in ((_Terminal(), {"progress": False}), (io.StringIO(), {})):
        monkeypatch.setattr(sys, "stderr", stream)
        AGENTS[name](0, **kwargs).search(problem, 2)
        assert "(evaluations)" not in stream.getvalue()
