"""MergeProblem on the tiny zoo: budget accounting, the ideal point and normalisation, durability."""

from __future__ import annotations

import dataclasses
import json
import logging
import math

import moocore
import numpy as np
import pytest

from merge_env.scoring.cache import EvalCache
from merge_env.scoring.tasks.task import Example, Task
from merge_env.search.budget import Ledger
from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import BASE, Recipe, param_merge


def _merge(problem: MergeProblem, weights: tuple[float, ...]) -> Recipe:
    """A linear merge of the pool's experts with these weights."""
    return Recipe(merge=param_merge("linear", dict(zip(problem.pool.experts, weights)), base=None))


def _ledger(problem: MergeProblem) -> list[dict]:
    return [json.loads(x) for x in problem.ledger.path.read_text().splitlines()]


def _hv(points: np.ndarray) -> float:
    """Hypervolume above the origin of the non-dominated points, straight from moocore."""
    points = points[np.all(points > 0, axis=1)]
    return float(moocore.hypervolume(points, ref=np.zeros(points.shape[1]), maximise=True))


# -- budget accounting ---------------------------------------------------------------------------
def test_charges_fresh_search_scores_once_and_nothing_else(make_problem):
    problem = make_problem(cheap_examples=8)
    a, b = _merge(problem, (0.5, 0.25, 0.25)), _merge(problem, (0.25, 0.5, 0.25))
    problem.references()
    assert problem.spent == 0 and problem.reference_evaluations == len(problem.reference_recipes())
    scored = problem.score_many([a, b, a])  # a repeat within a batch is scored once
    assert [s.recipe for s in scored] == [a, b, a]
    assert [s.cost for s in scored] == [1.0, 1.0, 0.0] and scored[2].cached
    np.testing.assert_array_equal(scored[0].vector, scored[2].vector)
    assert problem.spent == 2 and problem.cache_hits == 1
    assert [e.recipe_hash for e in problem.archive] == [a.hash, b.hash]
    assert [e.evaluations for e in problem.archive] == [1, 2]
    again = problem.score(a)
    assert again.cached and again.cost == 0 and problem.spent == 2 and len(problem.archive) == 2
    test = problem.score(a, split="test")
    assert test.cost == 0 and problem.test_evaluations == 1 and problem.spent == 2
    c = _merge(problem, (0.2, 0.2, 0.6))
    cheap = problem.score(c, fidelity="cheap")
    # 8 examples per task instead of 32: a quarter of an evaluation, never archived
    assert cheap.cost == pytest.approx(problem.cost("cheap")) == pytest.approx(8 / 32)
    assert problem.archive.get(c.hash) is None
    assert sum(x["cost"] for x in _ledger(problem)) == pytest.approx(problem.spent)


def test_a_resumed_problem_reads_what_the_ledger_charged(make_problem, tmp_path):
    paths = {"archive_path": tmp_path / "a.jsonl", "cache_path": tmp_path / "c.sqlite"}
    first = make_problem(**paths)
    first.score_many([_merge(first, (0.5, 0.25, 0.25)), _merge(first, (0.25, 0.5, 0.25))])
    again = make_problem(**paths)
    assert again.spent == 2 and len(again.archive) == 2
    assert again.score(_merge(again, (0.5, 0.25, 0.25))).cached


# -- the ideal point and normalisation -----------------------------------------------------------
def test_ideal_is_the_best_single_model_and_exact_ratios_are_kept(make_problem):
    problem = make_problem()  # token accuracy: every single model scores above 0
    singles = np.stack([v for n, v in problem.references().items() if n.startswith("model:")])
    np.testing.assert_array_equal(problem.ideal, singles.max(axis=0))
    np.testing.assert_array_equal(problem.nadir, np.zeros(3))
    refs = np.stack(list(problem.references().values()))
    # f / z*, bit for bit, as before the nadir existed: published hypervolumes stay comparable
    np.testing.assert_array_equal(problem.normalised(refs), refs / problem.ideal)
    assert problem.hypervolume_of(refs) == pytest.approx(_hv(refs / problem.ideal), rel=1e-12)
    assert problem.hypervolume_of(refs) > problem.hypervolume_of(singles[:1]) > 0
    # a perfect model (every token right) scores 1 / z* a task: the most any front can reach
    np.testing.assert_array_equal(problem.perfect, np.ones(3))
    assert problem.hypervolume_ceiling() == pytest.approx(np.prod(1 / problem.ideal), rel=1e-12)
    assert problem.hypervolume_ceiling() >= problem.hypervolume_of(refs)


def test_loglik_is_normalised_from_a_uniform_guess(make_problem, tmp_path):
    from experiments.report import write_best_recipes

    problem = make_problem(metric="loglik")
    refs = np.stack(list(problem.references().values()))
    assert np.all(problem.ideal < 0)  # a log-likelihood, never floored
    # a uniform guess over the vocabulary, or the worst single model where that is lower (an
    # expert that unlearnt a task can be confidently wrong on it)
    vocab = problem.pool.checkpoints[BASE].config["vocab_size"]
    worst = refs[[n.startswith("model:") for n in problem.references()]].min(axis=0)
    np.testing.assert_allclose(problem.nadir, np.minimum(-math.log(vocab), worst))
    f = (refs - problem.nadir) / (problem.ideal - problem.nadir)
    np.testing.assert_allclose(problem.normalised(refs), f)
    np.testing.assert_allclose(problem.normalised(problem.ideal), np.ones(3))
    # the best single model per task sits at 1; every single model is at or above the nadir
    singles = f[[n.startswith("model:") for n in problem.references()]]
    assert np.all((singles >= 0) & (singles <= 1 + 1e-12)) and np.all(singles.max(axis=0) == 1)
    hv = problem.hypervolume_of(refs)
    assert hv > 0 and hv == pytest.approx(_hv(f), rel=1e-12)
    # a perfect model puts all its probability on the answer: log-likelihood 0, above z*
    np.testing.assert_array_equal(problem.perfect, np.zeros(3))
    ceiling = np.prod(-problem.nadir / (problem.ideal - problem.nadir))
    assert problem.hypervolume_ceiling() == pytest.approx(ceiling, rel=1e-12) and ceiling > hv
    curve = problem.hypervolume_curve()
    assert curve == []  # nothing archived yet; references are not the search's
    problem.score(_merge(problem, (1 / 3, 1 / 3, 1 / 3)))
    assert problem.hypervolume_curve()[-1][1] > 0
    assert problem.best(np.array([0.2, 0.3, 0.5])).source == "agent"
    # the run's report picks each preference's best recipe on the same normalised scores
    (_, entry), *_ = write_best_recipes(problem, np.eye(3)[:1], tmp_path / "recipes")
    assert entry == problem.best(np.eye(3)[0])


def test_a_task_no_model_solves_keeps_the_metric_scale(tiny_zoo, tmp_path):
    # exact match on answers of 30 letters after a reverse prompt: no tiny model gets one right
    rev = next(t for t in tiny_zoo.tasks if t.name == "reverse")
    hard = Task(
        "hard",
        tuple(Example(e.prompt, "z" * 30) for e in rev.search[:8]),
        tuple(Example(e.prompt, "z" * 30) for e in rev.test[:8]),
        metric="exact_match",
    )
    rev = dataclasses.replace(rev, metric="token_accuracy")
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    problem = build_problem(sources, [rev, hard], tiny_zoo.tokenizer_dir)
    assert problem.ideal[0] > 0 and problem.ideal[1] == 0.0
    one_right = np.array([problem.ideal[0], 1 / 8])
    # one answer in eight is 1/8 of the task, not 1/8 divided by a floor of 1e-6
    np.testing.assert_allclose(problem.normalised(one_right), [1.0, 1 / 8])
    assert problem.hypervolume_of(one_right) == pytest.approx(1 / 8)
    # the task keeps the metric's scale, so a perfect model scores 1 there, 1 / z* on the other
    assert problem.hypervolume_ceiling() == pytest.approx(1 / problem.ideal[0], rel=1e-12)


def test_a_task_the_pool_barely_does_is_named_in_a_warning(tiny_zoo, caplog):
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    problem = build_problem(sources, list(tiny_zoo.tasks)[:2], tiny_zoo.tokenizer_dir)
    # as if the best single model got half the first task right and 2 answers in 96 of the second
    problem._ideal = np.array([0.5, 2 / 96])
    with caplog.at_level(logging.WARNING, logger="merge_env.search.problem"):
        np.testing.assert_allclose(problem.top, problem.ideal)  # still divided by z*
    (record,) = [r for r in caplog.records if "reaches only" in r.getMessage()]
    message = record.getMessage()
    assert problem.objectives[1] in message and problem.objectives[0] not in message
    assert "[0.0208]" in message and "[48.0]" in message


# -- durability: a kill at the bad instant -------------------------------------------------------
class Killed(BaseException):
    """What a fault-injection hook raises in place of SIGKILL."""


def _kill(*args, **kwargs):
    raise Killed


@pytest.mark.parametrize("instant", ["before the charge", "between charge and cache"])
def test_a_kill_while_scoring_neither_loses_nor_repeats_the_charge(
    make_problem, tmp_path, monkeypatch, instant
):
    paths = {"archive_path": tmp_path / "a.jsonl", "cache_path": tmp_path / "c.sqlite"}
    problem = make_problem(**paths)
    recipe = _merge(problem, (0.5, 0.25, 0.25))
    with monkeypatch.context() as m:
        if instant == "before the charge":
            m.setattr(Ledger, "charge", _kill)
        else:
            m.setattr(EvalCache, "put", _kill)
        with pytest.raises(Killed):
            problem.score(recipe)
    resumed = make_problem(**paths)
    scored = resumed.score(recipe)
    assert resumed.spent == 1.0  # charged exactly once, whichever side of the kill it was
    assert sum(x["cost"] for x in _ledger(resumed)) == 1.0
    assert resumed.is_cached(recipe) and resumed.archive.get(recipe.hash) is not None
    assert resumed.score(recipe).cached and scored.vector.shape == (3,)
    assert make_problem(**paths).spent == 1.0


def test_a_torn_ledger_line_is_cut_off_so_the_next_charge_survives(make_problem, tmp_path):
    paths = {"archive_path": tmp_path / "a.jsonl", "cache_path": tmp_path / "c.sqlite"}
    problem = make_problem(**paths)
    problem.score(_merge(problem, (0.5, 0.25, 0.25)))
    clean = problem.ledger.path.read_bytes()
    with open(problem.ledger.path, "ab") as fh:
        fh.write(b'{"key": "abc:123", "fidel')  # a kill in the middle of an append
    resumed = make_problem(**paths)
    assert resumed.spent == 1.0
    assert resumed.ledger.path.read_bytes() == clean
    resumed.score(_merge(resumed, (0.25, 0.5, 0.25)))
    assert make_problem(**paths).spent == 2.0
    # a whole last line whose newline did not land is kept, and the next one starts clean
    whole = problem.ledger.path.read_bytes()
    problem.ledger.path.write_bytes(whole.rstrip(b"\n"))
    again = make_problem(**paths)
    assert again.spent == 2.0 and again.ledger.path.read_bytes() == whole
