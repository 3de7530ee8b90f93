"""experiments.compare_agents: each (agent, level, seed) run starts from nothing."""

from __future__ import annotations

from pathlib import Path

from experiments.compare_agents import run_one


def test_rerun_in_the_same_folder_starts_from_nothing(tiny_zoo, tmp_path, monkeypatch):
    # the tiny zoo the session built, found again by zoo_problem("tiny") through the cache dir
    root = Path(tiny_zoo.base).parent
    assert root.name.startswith("zoo-")
    monkeypatch.setenv("MERGEGYM_CACHE", str(root.parent))
    first = run_one("random", 0, "both", 4, "tiny", tmp_path, cheap=4)
    again = run_one("random", 0, "both", 4, "tiny", tmp_path, cheap=4)
    assert 3 < first["spent"] <= 4
    # archive, cache and ledger all start empty: same spending, same curve, evaluations <= budget
    assert again["spent"] == first["spent"]
    assert again["curve"] == first["curve"]
    assert max(evals for evals, _ in again["curve"]) <= 4
    assert set(again["hv_by_source"]) == {"random"}
    assert again["hv_by_source"]["random"] == again["hv"]
