"""The framework's search services (agents/base.py): anchors and screening by configuration alone.

The toy agent below is written as a user would write one: one class, a search loop over its own
proposals, scored through ``evaluate_many``. It knows nothing of anchors or fidelities.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
from hydra.utils import instantiate

from agents.base import ANCHOR, Agent, BudgetBar
from merge_env.search.archive import Archive
from merge_env.search.budget import Budget
from merge_env.search.problem import MergeProblem
from merge_env.search.recipe import Recipe, weighted_merge


class ToyAgent(Agent):
    """Random linear merges of the experts, four at a time."""

    name = "toy"

    def search(self, problem: MergeProblem, budget: float) -> Archive:
        b, rng = Budget(problem, budget), np.random.default_rng(self.seed)
        while True:
            weights = rng.dirichlet(np.ones(len(problem.pool.experts)), size=4)
            recipes = [Recipe(merge=weighted_merge("linear", dict(zip(problem.pool.experts, w))))
                       for w in weights]  # fmt: skip
            if len(self.evaluate_many(problem, b, recipes)) < len(recipes):
                return problem.archive


def _toy(**services) -> ToyAgent:
    """The toy agent as the runner builds one: from a config node naming its class."""
    return instantiate({"_target_": f"{__name__}.ToyAgent", "seed": 0, **services})


def _charges(problem: MergeProblem) -> list[dict]:
    return [json.loads(x) for x in problem.ledger.path.read_text().splitlines()]


def test_a_user_agent_gets_anchors_and_screening_by_configuration(make_problem):
    problem = make_problem(cheap_examples=4)
    problem.references()  # as the runner does: the ideal point, scored outside any budget
    agent = _toy(anchors=True, screening=True, screen_keep=0.25)
    agent.search(problem, 12)
    anchors = problem.anchor_recipes()
    archived = {e.recipe_hash: e.source for e in problem.archive}
    assert all(archived.get(r.hash) == ANCHOR for r in anchors.values())  # every anchor
    charges = _charges(problem)
    paid = {(c["key"], c["fidelity"]) for c in charges}
    # anchors are charged like any evaluation, although the references left them in the cache
    assert all((problem.model_key(r), "full") in paid for r in anchors.values())
    cheap = [c for c in charges if c["fidelity"] == "cheap"]
    assert cheap and all(c["cost"] == problem.cost("cheap") < 1 for c in cheap)
    toy = [e for e in problem.archive if e.source == "toy"]
    assert 0 < len(toy) < len(cheap)  # one in four screened recipes promoted to full
    assert problem.spent <= 12 + 1e-9


def test_services_off_mean_full_scores_only_and_no_anchor(make_problem):
    problem = make_problem(cheap_examples=4)
    _toy(anchors=False, screening=False).search(problem, 4)
    assert {e.source for e in problem.archive} == {"toy"} and len(problem.archive) == 4
    assert {c["fidelity"] for c in _charges(problem)} == {"full"}


def test_screen_promotes_the_best_and_anchors_are_paid_once(make_problem):
    problem = make_problem(cheap_examples=4)
    agent = _toy()
    assert agent.anchors and agent.screening  # the defaults: on, for every agent alike
    b = Budget(problem, 30)
    first = agent.seed_anchors(problem, b)
    assert len(first) == len(problem.anchor_recipes()) and agent.seed_anchors(problem, b) is first
    assert b.used == len(first)
    experts = problem.pool.experts
    recipes = [Recipe(merge=weighted_merge("linear", dict(zip(experts, w))))
               for w in np.random.default_rng(1).dirichlet(np.ones(len(experts)), size=6)]  # fmt: skip
    screening = agent.screen(problem, b, recipes, keep=2)
    assert [s.recipe for s in screening.scores] == recipes
    assert [s.fidelity for s in screening.promoted] == ["full", "full"]
    cheap = [s for s in screening.scores if s.fidelity == "cheap"]
    full = [s for s in screening.scores if s.fidelity == "full"]
    assert len(cheap) == 4 and len(full) == 2
    # the promoted are the cheap screen's best (front by front): none of them dominated by a loser
    f = problem.normalised(np.stack([s.vector for s in cheap]))
    for s in full:
        g = problem.normalised(problem.score(s.recipe, fidelity="cheap").vector)
        assert not np.any(np.all(f >= g, axis=1) & np.any(f > g, axis=1))
    # a second budget on the same ledger does not pay for the anchors again (a resumed run)
    before = problem.spent
    agent.seed_anchors(problem, Budget(problem, 5))
    assert problem.spent == before


def test_proposals_seed_a_genome_agent_by_configuration(make_problem):
    """``proposals: N`` screens N candidates of the framework's proposal distribution (the one
    PPO pre-trains on) and starts a genome agent's population from the promoted ones."""
    from agents.nsga2 import NSGA2Agent
    from merge_env.search.proposals import propose_candidates

    problem = make_problem(cheap_examples=4)
    problem.references()
    agent = NSGA2Agent(seed=3, pop_size=4, anchors=False, proposals=12, progress=False)
    budget, genome = agent.start(problem, 6)
    seeds = agent.seed_genomes(problem, budget, genome, keep=4)
    env = agent.proposal_env(problem)
    n = agent.proposal_count(problem, budget, "cheap")  # as many as 0.2 of the budget pays for
    assert 0 < n < 12
    first = [c.recipe(env) for c in propose_candidates(env, n, np.random.default_rng(3))]
    usable = [r.hash for r in first if genome.encode(r) is not None]
    charges = _charges(problem)
    cheap = [c["key"] for c in charges if c["fidelity"] == "cheap"]
    full = [c for c in charges if c["fidelity"] == "full"]
    assert len(cheap) == len(usable) > 4  # each usable proposal screened once, cheaply
    assert len(seeds) == len(full) == 4  # the best 4 promoted, each one a genome
    for x, scored in seeds:
        assert scored.recipe.hash in usable and scored.fidelity == "full"
        assert genome.decode(x).hash == scored.recipe.hash
    again = agent.seed_genomes(problem, budget, genome, keep=4)  # once per budget: free
    assert [s.recipe.hash for _, s in again] == [s.recipe.hash for _, s in seeds]
    assert len(_charges(problem)) == len(charges)
    off = NSGA2Agent(seed=3, pop_size=4, anchors=False, proposals=0, progress=False)
    b2, g2 = off.start(problem, 6)
    assert off.seed_genomes(problem, b2, g2) == [] and len(_charges(problem)) == len(charges)


def test_budget_bar_shows_the_evaluations_spent_rounded_not_a_float_sum():
    # cheap screenings cost fractions of an evaluation; summed into tqdm's count they showed as
    # "161.32999999999998/200.0"
    budget = SimpleNamespace(budget=200.0, used=0.0)
    with BudgetBar(budget, "test (evaluations)") as bar:
        assert bar.bar.total == 200 and isinstance(bar.bar.total, int)
        for _ in range(490):
            budget.used += 0.33
            bar.update(episodes=1)
        assert bar.bar.n == round(budget.used, 2) == 161.7
        budget.used = 162.0
        bar.update()
        assert bar.bar.n == 162 and isinstance(bar.bar.n, int)
    spent = SimpleNamespace(budget=50.0, used=12.5)  # PPO's online phase starts part-spent
    with BudgetBar(spent, "test (evaluations)") as bar:
        assert bar.bar.n == 12.5
