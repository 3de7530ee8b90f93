"""RayBackend on a local Ray (2 CPUs) over the tiny zoo: same archive, no lost or repeated score."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from agents.random_search import RandomSearch
from merge_env.errors import ConfigError, MergeGymError
from merge_env.scoring.parallel import RayBackend, attach_ray, use_backend
from merge_env.search.problem import build_problem
from merge_env.search.recipe import BASE, MERGED, Recipe, Slot, param_merge

CONF = Path(__file__).resolve().parents[2] / "conf"
EXAMPLES = 8  # per task: the scheduling is under test, not the scores
HALF = 0.5  # CPUs per actor: 1 + 2 + 1 actors live at once on a 2-CPU local Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (2 CPUs, as on CI); the tests that need it skip without it."""
    ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'mergegym[ray]'")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def fresh(tiny_zoo, tmp_path_factory):
    """A function building a MergeProblem over the tiny zoo with its own archive and cache."""
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}

    def build():
        d = tmp_path_factory.mktemp("problem")
        return build_problem(
            sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, max_examples=EXAMPLES,
            metric="token_accuracy", archive_path=d / "archive.jsonl",
            cache_path=d / "cache.sqlite",
        )  # fmt: skip

    return build


@pytest.fixture(scope="module")
def backends(local_ray, tiny_zoo, fresh):
    """RayBackends with 1 and 2 workers, shared by the module (actors take seconds to start).

    The 2-worker one is made by attach_ray on a problem (kept as ``backends["problem"]``); any
    problem over the same pool may use either.
    """
    sources = {BASE: tiny_zoo.base, **tiny_zoo.experts}
    problem = fresh()
    made = {
        1: RayBackend(sources, tiny_zoo.tasks, tiny_zoo.tokenizer_dir, num_workers=1,
                      num_cpus_per_worker=HALF),
        2: attach_ray(problem, tiny_zoo.tokenizer_dir, num_workers=2, num_cpus_per_worker=HALF),
    }  # fmt: skip
    yield {**made, "problem": problem}
    for b in made.values():
        b.close()


def _recipes(problem, n: int) -> list[Recipe]:
    """n distinct recipes: TIES merges of distinct weights, every other one with a short path."""
    experts = problem.pool.experts
    out = []
    for i in range(n):
        merge = param_merge("ties", {e: 0.5 + 0.1 * i + 0.2 * j for j, e in enumerate(experts)},
                            density=0.5)  # fmt: skip
        path = (Slot(MERGED, 0, 1.0), Slot(experts[i % len(experts)], 1, 0.5)) if i % 2 else None
        out.append(Recipe(merge=merge, path=path))
    assert len({r.hash for r in out}) == n
    return out


def _archive(problem) -> list[tuple[str, dict]]:
    return [(e.recipe_hash, e.scores) for e in problem.archive]


def test_same_seed_same_archive_with_one_and_two_workers_and_in_process(backends, fresh):
    runs = {}
    for name in ("local", 1, 2):
        problem = fresh()
        if name != "local":
            problem.backend = backends[name]
        RandomSearch(seed=3, batch_size=4).search(problem, 6)
        runs[name] = _archive(problem)
        assert problem.spent == 6
    assert len(runs[1]) == 6
    assert runs[1] == runs[2]
    assert [h for h, _ in runs["local"]] == [h for h, _ in runs[1]]
    for (_, a), (_, b) in zip(runs["local"], runs[1]):
        assert a == pytest.approx(b, abs=1e-6)


def test_batch_larger_than_the_workers_is_scored_completely_in_order(backends, fresh):
    problem = fresh()
    recipes = _recipes(problem, 7)
    remote = backends[2](recipes, problem.evaluator, "search")
    local = problem.local_backend(recipes, problem.evaluator, "search")
    assert len(remote) == 7
    for r, loc in zip(remote, local):
        assert set(r) == set(problem.objectives)
        for task in problem.objectives:
            assert r[task].token_accuracy == pytest.approx(loc[task].token_accuracy, abs=1e-6)
            assert r[task].n == EXAMPLES
    assert backends[2]([], problem.evaluator, "search") == []


def test_a_killed_actor_loses_no_score_and_repeats_none(local_ray, backends, fresh, monkeypatch):
    ray = local_ray
    backend = backends[2]
    problem, reference = fresh(), fresh()
    recipes = _recipes(problem, 6)
    expected = [s.vector for s in reference.score_many(recipes)]  # in-process
    submit, calls = backend._submit, []

    def kill_the_third(slot, recipe, settings, split):
        calls.append(slot)
        if len(calls) == 3:  # mid-batch: two recipes done or in flight, three still queued
            pid = ray.get(backend.workers[slot].probe.remote(settings, split))["pid"]
            os.kill(pid, signal.SIGKILL)  # a crash (OOM killer, lost node), not a polite stop
        return submit(slot, recipe, settings, split)

    monkeypatch.setattr(backend, "_submit", kill_the_third)
    restarts, resent = backend.restarts, backend.resent
    problem.backend = backend
    scored = problem.score_many(recipes)
    assert backend.restarts == restarts + 1 and backend.resent == resent + 1
    assert len(calls) == 7  # six recipes, one of them sent twice
    for s, want in zip(scored, expected):
        np.testing.assert_allclose(s.vector, want, atol=1e-6)
        assert not s.cached
    assert problem.spent == 6
    ledger = [json.loads(line)["key"] for line in problem.ledger.path.read_text().splitlines()]
    assert sorted(ledger) == sorted(problem.model_key(r) for r in recipes)  # each charged once
    assert [e.recipe_hash for e in problem.archive] == [r.hash for r in recipes]
    again = problem.score_many(recipes)  # all cached now: nothing is sent again
    assert all(s.cached for s in again) and problem.spent == 6 and len(calls) == 7


def test_a_recipe_that_keeps_killing_its_actor_fails_with_our_error(
    local_ray, backends, fresh, monkeypatch
):
    ray = local_ray
    backend = backends[1]
    problem = fresh()
    submit = backend._submit

    def always_kill(slot, recipe, settings, split):
        pid = ray.get(backend.workers[slot].probe.remote(settings, split))["pid"]
        os.kill(pid, signal.SIGKILL)
        return submit(slot, recipe, settings, split)

    monkeypatch.setattr(backend, "_submit", always_kill)
    monkeypatch.setattr(backend, "max_resends", 0)
    with pytest.raises(MergeGymError, match="died 1 time"):
        backend(_recipes(problem, 1), problem.evaluator, "search")
    assert problem.spent == 0


def test_worker_errors_arrive_as_ours_and_the_pool_must_match(backends, fresh, tiny_zoo):
    problem = fresh()
    bad = Recipe(path=(Slot(BASE, 7, 1.0),))  # the tiny zoo has 2 layers
    with pytest.raises(MergeGymError) as info:
        problem.local_backend([bad], problem.evaluator, "search")
    with pytest.raises(type(info.value)):
        backends[2]([bad], problem.evaluator, "search")
    with pytest.raises(ConfigError, match="backend"):
        use_backend(problem, tiny_zoo.tokenizer_dir, "slurm")
    assert use_backend(problem, tiny_zoo.tokenizer_dir, "local") is None


def test_attach_ray_checks_the_pool_and_installs_the_backend(backends, tiny_zoo):
    problem, backend = backends["problem"], backends[2]
    assert problem.backend is backend
    assert backend.fingerprint == problem.pool.fingerprint
    assert problem.score(_recipes(problem, 1)[0]).cost == 1
    with pytest.raises(ConfigError, match="num_workers"):
        attach_ray(problem, tiny_zoo.tokenizer_dir, num_workers=0)


def test_ray_evaluator_config_composes_and_validates():
    from hydra import compose, initialize_config_dir

    from experiments.config_check import validate_run_config

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["evaluator=ray", "agent=random", "logger=none",
                                           "run_name=r", "evaluator.num_workers=4"])  # fmt: skip
    assert cfg.evaluator.backend == "ray" and cfg.evaluator.num_workers == 4
    assert cfg.evaluator.batch_size == 64  # inherited from evaluator/local.yaml
    validate_run_config(cfg)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        bad = compose("config", overrides=["evaluator=ray", "run_name=r",
                                           "evaluator.num_workers=two"])  # fmt: skip
    with pytest.raises(ConfigError, match="evaluator.num_workers"):
        validate_run_config(bad)


def _families(problem, merges: int) -> list[Recipe]:
    """Per merge, two families of paths (as a PPO step or a CMA-ES generation proposes): one
    starting with the merged layer 0, one with a scaled expert layer 0; repeats and scales."""
    e = problem.pool.experts[0]
    out = []
    for m in range(merges):
        merge = param_merge("ties", {x: 0.4 + 0.3 * m + 0.1 * j
                                     for j, x in enumerate(problem.pool.experts)}, density=0.5)  # fmt: skip
        for head in ((Slot(MERGED, 0),), (Slot(e, 0, 1.25),)):
            for tail in ((Slot(MERGED, 1),), (Slot(MERGED, 1), Slot(MERGED, 1, 0.5)),
                         (Slot(BASE, 1, 0.75),)):  # fmt: skip
                out.append(Recipe(merge=merge, path=head + tail))
    return out


def _spy_units(backend, monkeypatch) -> list[list[str]]:
    """Record the recipe hashes of every unit the backend sends."""
    sent, submit = [], backend._submit

    def spy(slot, unit, settings, split):
        sent.append(sorted(Recipe.from_dict(r).hash for r in unit))
        return submit(slot, unit, settings, split)

    monkeypatch.setattr(backend, "_submit", spy)
    return sent


def test_ray_scores_equal_local_bit_for_bit_and_prefixes_stay_on_one_actor(
    backends, fresh, monkeypatch
):
    problem, backend = fresh(), backends[2]
    recipes = _families(problem, merges=2)
    sent = _spy_units(backend, monkeypatch)
    reused = sum(s.slots_reused for s in backend.prefix_stats())
    remote = backend(recipes, problem.evaluator, "search")
    assert remote == problem.local_backend(recipes, problem.evaluator, "search")  # bit for bit
    by_merge = sorted(sorted(r.hash for r in recipes[i : i + 6]) for i in (0, 6))
    assert sorted(sent) == by_merge  # two workers, two merges: a merge's recipes on one actor
    assert sum(s.slots_reused for s in backend.prefix_stats()) > reused  # and shared there


def test_one_merge_is_split_between_its_prefix_families(backends, fresh, monkeypatch):
    problem, backend = fresh(), backends[2]
    recipes = _families(problem, merges=1)
    sent = _spy_units(backend, monkeypatch)
    remote = backend(recipes, problem.evaluator, "search")
    assert remote == problem.local_backend(recipes, problem.evaluator, "search")
    families = sorted(sorted(r.hash for r in recipes[i : i + 3]) for i in (0, 3))
    assert sorted(sent) == families  # cut where the recipes share only the merge
