"""The agent interface: anything that searches a MergeProblem within an evaluation budget.

There is no name -> class table: the registry is ``conf/agent/``, one YAML per agent whose
``_target_`` names the class, so a new agent is one file here plus one YAML there.

The base also holds the framework's search services, switched per agent by configuration
(``anchors``, ``screening``, ``screen_keep``; DESIGN §3: a trick that helps one agent is a
service every agent can switch on). They act through the two scoring seams, ``evaluate`` (one
recipe) and ``evaluate_many`` (a batch), so an agent that scores through them gets them without
a line of its own:

* **Anchors** (``anchors: true``): before the first recipe an agent scores under a Budget, the
  problem's anchors (``MergeProblem.anchor_recipes``: each pool model as it is, and the plain
  merges, exactly the references) are scored at full fidelity, charged like any evaluation and
  archived with source ``"anchor"``, so the front holds the search's own inputs.
* **Screening** (``screening: true``): a batch passed to ``evaluate_many`` is scored at the
  problem's cheap fidelity (``MergeProblem.cost("cheap")`` each), and the best ``screen_keep``
  share of it (at least one; front by front of the cheap scores, or by ``problem.fitness`` for a
  single-objective agent) is promoted to full fidelity: multi-fidelity successive halving with
  one rung. ``screen`` and ``score_cheap`` are the same service called directly.
* **Proposals** (``proposals: N``): N candidates of the framework's proposal distribution
  (merge_env/search/proposals.py: the env's lattice merges, each pool model's layers alone,
  merge/base interleavings), scored at the start within ``proposal_fraction`` of the budget
  (cheaply, with screening) and the best promoted (``screen_proposals``). PPO pre-trains on them;
  a genome agent starts its population from them (``GenomeAgent.seed_genomes``). A prior found
  useful for one agent is thereby one every agent can switch on, and a protocol sets it for all.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from merge_env.errors import ConfigError
from merge_env.search.archive import Archive
from merge_env.search.budget import Budget, BudgetExhausted
from merge_env.search.pareto import non_dominated
from merge_env.search.problem import MergeProblem, Scored
from merge_env.search.recipe import Recipe

ANCHOR = "anchor"  # the archive source of anchors

log = logging.getLogger(__name__)


class BudgetBar:
    """One progress bar per search, in evaluations spent out of the budget (as PPO's).

    Off when ``enabled`` is false (``agent.progress=false``), and, tqdm's rule, when stderr is
    not a terminal (log files, CI, Slurm jobs), where it would only add noise.
    """

    def __init__(self, budget: Budget, desc: str, enabled: bool = True) -> None:
        self.budget = budget
        self.bar = tqdm(
            total=_count(budget.budget), initial=_count(budget.used), desc=desc, unit="eval",
            leave=False, disable=None if enabled else True,
        )  # fmt: skip

    def update(self, **postfix: Any) -> None:
        """Move the bar to the evaluations spent so far; ``postfix`` is shown beside it.

        The count is set, not added to: fractional costs (cheap screenings) summed as floats
        would show as 161.32999999999998."""
        self.bar.n = _count(self.budget.used)
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(0)  # redraws, at tqdm's own rate

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> BudgetBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _count(evaluations: float) -> float:
    """Evaluations as the bar shows them: whole numbers as ints (4, not 4.0), else 2 decimals."""
    return int(evaluations) if float(evaluations).is_integer() else round(evaluations, 2)


@dataclass(frozen=True)
class Screening:
    """What screening a batch returns: a score per screened recipe, the promoted ones' in full."""

    scores: list[
        Scored
    ]  # per recipe of the screened prefix: full if promoted (or cached), else cheap
    promoted: list[Scored]  # the full-fidelity scores of the recipes promoted by this screening


class Agent(ABC):
    """Searches a MergeProblem; every recipe it scores lands in ``problem.archive``.

    ``anchors``, ``screening``, ``screen_keep`` switch the framework's services (module
    docstring); ``cheap_examples`` gives the problem a cheap fidelity of that many examples per
    task when it has none (the evaluator's ``cheap_examples`` comes first).
    """

    name: str = "agent"
    # whether the search maximises the problem's scalar ``fitness`` (single-objective agents)
    uses_fitness: bool = False
    # set by the runner: where an agent may keep its own state (e.g. a policy) for resuming
    workdir: Path | None = None

    def __init__(
        self,
        seed: int = 0,
        *,
        anchors: bool = True,
        screening: bool = True,
        screen_keep: float = 0.25,
        cheap_examples: int | None = 16,
        proposals: int = 0,
        proposal_fraction: float = 0.2,
    ) -> None:
        self.seed = int(seed)
        if proposals < 0 or not 0.0 <= proposal_fraction < 1.0:
            raise ConfigError(f"agent.proposals must be >= 0 and agent.proposal_fraction in "
                              f"[0, 1), got {proposals}, {proposal_fraction}")  # fmt: skip
        if not 0.0 < screen_keep <= 1.0:
            raise ConfigError(f"agent.screen_keep must be in (0, 1], got {screen_keep}")
        if cheap_examples is not None and cheap_examples < 1:
            raise ConfigError(f"agent.cheap_examples must be >= 1 or null, got {cheap_examples}")
        self.anchors = bool(anchors)
        self.screening = bool(screening)
        self.screen_keep = float(screen_keep)
        self.cheap_examples = cheap_examples
        self.proposals = int(proposals)
        self.proposal_fraction = float(proposal_fraction)

    @abstractmethod
    def search(self, problem: MergeProblem, budget: float) -> Archive:
        """Spend at most ``budget`` evaluations on ``problem``; return its archive."""

    # -- scoring seams -----------------------------------------------------------------------
    def evaluate(
        self, problem: MergeProblem, budget: Budget, recipe: Recipe, fidelity: str = "full"
    ) -> Scored:
        """Score one recipe within the budget; BudgetExhausted when it cannot be afforded."""
        if self.anchors:
            self.seed_anchors(problem, budget)
        if fidelity == "cheap":
            self.ensure_cheap(problem)
        if not problem.is_cached(recipe, fidelity) and budget.exhausted(problem.cost(fidelity)):
            raise BudgetExhausted
        return problem.score(recipe, fidelity=fidelity, source=self.name)

    def evaluate_many(
        self, problem: MergeProblem, budget: Budget, recipes: Sequence[Recipe]
    ) -> list[Scored]:
        """Score a batch in order through the configured services; the list is cut short where
        the budget cannot pay for the next recipe. With screening on, a recipe's score is its
        full one if it was promoted (``Scored.fidelity``), else its cheap one."""
        if self.anchors:
            self.seed_anchors(problem, budget)
        if self.screening and self._keep(len(recipes)) < len(recipes):
            return self.screen(problem, budget, recipes).scores
        return self._score_prefix(problem, budget, recipes, "full")

    # -- anchors -----------------------------------------------------------------------------
    def seed_anchors(self, problem: MergeProblem, budget: Budget) -> list[Scored]:
        """Score the problem's anchors once per budget (the first call; later calls return the
        same list), in order, as far as the budget pays; archived with source "anchor"."""
        done = getattr(budget, "anchors", None)
        if done is not None:
            return done
        budget.anchors = []  # set first: the scoring below must not seed again
        recipes, spend = [], 0.0
        for recipe in problem.anchor_recipes().values():
            price = problem.price(recipe, pay_cached=True)
            if budget.exhausted(spend + price):
                break
            spend += price
            recipes.append(recipe)
        if recipes:
            budget.anchors = problem.score_many(recipes, source=ANCHOR, pay_cached=True)
        return budget.anchors

    # -- proposals ---------------------------------------------------------------------------
    def proposal_count(self, problem: MergeProblem, budget: Budget, fidelity: str) -> int:
        """How many proposals to score at ``fidelity``: ``proposals``, at most as many as
        ``proposal_fraction`` of the budget pays for."""
        cost = problem.cost(fidelity)
        return int(min(self.proposals, self.proposal_fraction * budget.budget // cost))

    def screen_proposals(
        self, problem: MergeProblem, budget: Budget, env: Any, keep: int | None = None,
        accept: Any = None,
    ) -> list[Scored]:  # fmt: skip
        """Once per budget: score the proposals (``proposal_count`` of them, from ``env``'s
        space, seeded by the agent's seed; ``accept(recipe)`` drops those the agent cannot use)
        and return the full scores of the best ``keep`` (default: the ``screen_keep`` share).

        With screening on they are scored at the cheap fidelity and the best promoted (the
        screening service); with it off, scored in full. Later calls return the same list.
        """
        from merge_env.search.proposals import propose_candidates

        done = getattr(budget, "proposals", None)
        if done is not None:
            return done
        budget.proposals = []
        if self.proposals <= 0:
            return budget.proposals
        fidelity = "cheap" if self.screening else "full"
        if self.screening:
            self.ensure_cheap(problem)
        n = self.proposal_count(problem, budget, fidelity)
        rng = np.random.default_rng(self.seed)
        recipes = [c.recipe(env) for c in propose_candidates(env, n, rng)]
        recipes = [r for r in recipes if accept is None or accept(r)]
        if not recipes:
            return budget.proposals
        if self.screening:
            promoted = self.screen(problem, budget, recipes, keep).promoted
        else:
            scored = self._score_prefix(problem, budget, recipes, "full")
            best = self.best_share(problem, range(len(scored)), [s.vector for s in scored], keep)
            promoted = [scored[i] for i in best]
        budget.proposals = promoted
        return promoted

    # -- screening ---------------------------------------------------------------------------
    def ensure_cheap(self, problem: MergeProblem) -> None:
        """Give ``problem`` a cheap fidelity of ``cheap_examples`` per task if it has none."""
        if problem.cheap_evaluator is not None:
            return
        if self.cheap_examples is None:
            raise ConfigError(
                "agent.cheap_examples: the problem has no cheap fidelity "
                "(evaluator.cheap_examples); set a number or screening=false"
            )
        problem.enable_cheap(self.cheap_examples)

    def score_cheap(
        self, problem: MergeProblem, budget: Budget, recipes: Sequence[Recipe]
    ) -> list[Scored]:
        """Cheap-fidelity scores of the prefix of ``recipes`` the budget pays for (not archived)."""
        self.ensure_cheap(problem)
        return self._score_prefix(problem, budget, recipes, "cheap")

    def screen(
        self,
        problem: MergeProblem,
        budget: Budget,
        recipes: Sequence[Recipe],
        keep: int | None = None,
    ) -> Screening:
        """Score a batch cheaply and promote its best ``keep`` (default: the ``screen_keep``
        share) to full fidelity.

        Only the prefix whose cheap scores *and* promotions the budget pays for is screened, so
        the budget never ends on cheap scores that nothing was promoted from. A recipe already
        scored in full is not screened: its full score is used, free.
        """
        self.ensure_cheap(problem)
        full = problem.cost("full")
        n, spend, fresh = 0, 0.0, 0
        for recipe in recipes:
            new = not problem.is_cached(recipe)
            price = problem.price(recipe, "cheap") if new else 0.0
            if budget.exhausted(spend + price + self._keep(fresh + new, keep) * full):
                break
            spend, n, fresh = spend + price, n + 1, fresh + new
        prefix = list(recipes[:n])
        known = [problem.is_cached(r) for r in prefix]
        todo = [i for i, k in enumerate(known) if not k]
        done = [i for i, k in enumerate(known) if k]
        scores: dict[int, Scored] = {}
        cheap_scores = problem.score_many([prefix[i] for i in todo], fidelity="cheap",
                                          source=self.name) if todo else []  # fmt: skip
        scores.update(zip(todo, cheap_scores))
        chosen = sorted(self.best_share(problem, todo, [s.vector for s in cheap_scores], keep))
        promoted = (
            problem.score_many([prefix[i] for i in chosen], source=self.name) if chosen else []
        )
        scores.update(zip(chosen, promoted))
        if done:
            scores.update(
                zip(done, problem.score_many([prefix[i] for i in done], source=self.name))
            )
        return Screening([scores[i] for i in range(n)], promoted)

    def promotion_order(self, problem: MergeProblem, vectors: np.ndarray) -> np.ndarray:
        """Indices of score vectors, best first: by ``problem.fitness`` for a single-objective
        agent, else front by front of the normalised scores (each front by fitness)."""
        if len(vectors) == 0:
            return np.zeros(0, int)
        fitness = np.array([problem.fitness(v) for v in vectors])
        if self.uses_fitness:
            return np.argsort(-fitness, kind="stable")
        f = problem.normalised(np.atleast_2d(vectors))
        left, order = np.arange(len(f)), []
        while len(left):
            front = left[non_dominated(f[left])]
            if len(front) == 0:  # identical rows: non_dominated keeps one of each
                front = left
            order += list(front[np.argsort(-fitness[front], kind="stable")])
            left = np.setdiff1d(left, front)
        return np.asarray(order, int)

    def best_share(
        self, problem: MergeProblem, ids: Sequence[int], vectors: Sequence[np.ndarray],
        keep: int | None = None,
    ) -> list[int]:  # fmt: skip
        """The ids (``vectors[j]`` scores ``ids[j]``) of the best ``keep`` (default: the
        ``screen_keep`` share), best first: what screening promotes to full fidelity."""
        order = self.promotion_order(problem, np.array(vectors))
        return [ids[j] for j in order[: self._keep(len(ids), keep)]]

    def _keep(self, n: int, keep: int | None = None) -> int:
        """How many of a screened batch of ``n`` are promoted."""
        if n <= 0:
            return 0
        k = keep if keep is not None else math.ceil(self.screen_keep * n - 1e-9)
        return int(min(n, max(1, k)))

    def _score_prefix(
        self, problem: MergeProblem, budget: Budget, recipes: Sequence[Recipe], fidelity: str
    ) -> list[Scored]:
        """Score, as one batch, the prefix of ``recipes`` the budget pays for at ``fidelity``
        (cached ones and repeats within the batch are free)."""
        spend, seen, n = 0.0, set(), 0
        for recipe in recipes:
            if recipe.hash not in seen and not problem.is_cached(recipe, fidelity):
                if budget.exhausted(spend + problem.cost(fidelity)):
                    break
                spend += problem.cost(fidelity)
            seen.add(recipe.hash)
            n += 1
        if n == 0:
            return []
        return problem.score_many(list(recipes[:n]), fidelity=fidelity, source=self.name)
