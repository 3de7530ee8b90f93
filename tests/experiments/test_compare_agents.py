"""experiments.compare_agents: protocols, one space per comparison, results that say what ran."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments import compare_agents as ca
from merge_env.errors import ConfigError


@pytest.fixture
def zoo_cache(tiny_zoo, monkeypatch):
    """The tiny zoo the session built, found again by pool=tiny through the cache dir."""
    root = Path(tiny_zoo.base).parent
    assert root.name.startswith("zoo-")
    monkeypatch.setenv("MERGEGYM_CACHE", str(root.parent))


def test_rerun_in_the_same_folder_starts_from_nothing(zoo_cache, tmp_path):
    protocol = ca.load_protocol("smoke")
    first = ca.run_one(protocol, "random", 0, 0, "both", tmp_path)
    again = ca.run_one(protocol, "random", 0, 0, "both", tmp_path)
    assert 3 < first["spent"] <= protocol["budget"]
    # archive, cache and ledger all start empty: same spending, same curve, evaluations <= budget
    assert again["spent"] == first["spent"]
    assert again["curve"] == first["curve"]
    assert max(evals for evals, _ in again["curve"]) <= protocol["budget"]
    assert again["hv_test"] == first["hv_test"] > 0
    assert (tmp_path / "runs" / "z0__random__both__0" / "front_test.json").is_file()


def test_protocols_fix_seeds_and_the_reported_one_is_untuned():
    tuning, heldout = ca.load_protocol("tuning"), ca.load_protocol("heldout")
    assert (tuning["purpose"], tuning["zoo_seeds"], tuning["search_seeds"]) == (
        "tuning", [0], list(range(10)))  # fmt: skip
    assert (heldout["purpose"], heldout["zoo_seeds"], heldout["search_seeds"]) == (
        "reported", [1, 2], list(range(100, 110)))  # fmt: skip
    assert heldout["env"] == tuning["env"] and heldout["budget"] == tuning["budget"]
    with pytest.raises(
        ConfigError, match=r"protocol.search_seeds: \[5\] also in protocol 'tuning'"
    ):
        ca.load_protocol("heldout", ["search_seeds=[5,100]"])
    with pytest.raises(ConfigError, match=r"protocol.zoo_seeds: \[0\]"):
        ca.load_protocol("heldout", ["zoo_seeds=[0]"])
    with pytest.raises(ConfigError, match="protocol.env.modes: not a setting of the env group"):
        ca.load_protocol("smoke", ["+env.modes=free"])


def test_the_protocol_reaches_every_agent_config():
    protocol = ca.load_protocol("smoke", ["env.mode=aligned", "anchors=false"])
    for agent in ("ppo", "random", "cmaes"):
        cfg, passed = ca.run_config(protocol, agent, 1, 0, "both")
        settings = ca.comparison_settings(cfg)
        assert settings["env.mode"] == "aligned"  # a genome agent's encoding counts as its mode
        assert settings["env.lattice_steps"] == 2 and settings["budget"] == 4
        assert settings["evaluator.cheap_examples"] == 4 and cfg.pool.seed == 0
        for key in ca.PASSED:
            assert passed[key] == (protocol[key] if key in cfg.agent else "unsupported")
            if key in cfg.agent:
                assert cfg.agent[key] == protocol[key]


def test_a_genome_encoding_is_the_space_it_searched():
    protocol = ca.load_protocol("smoke")  # env.mode: free
    cfg, _ = ca.run_config(protocol, "random", 0, 0, "both", ["agent.encoding=aligned"])
    assert ca.comparison_settings(cfg)["env.mode"] == "aligned"


def _run(agent: str, level: str = "both", **settings) -> dict:
    return {
        "agent": agent,
        "level": level,
        "settings": {"env.mode": "free", "budget": 4, **settings},
    }


def test_agents_that_searched_different_spaces_are_refused():
    ca.check_one_space([_run("ppo"), _run("random"), _run("ppo", "param", **{"env.mode": "x"})])
    with pytest.raises(ConfigError, match=r"env.mode: ppo=\"free\", random=\"aligned\"") as err:
        ca.check_one_space([_run("ppo"), _run("random", **{"env.mode": "aligned", "budget": 8})])
    assert "budget: ppo=4, random=8" in str(err.value)


def test_a_space_override_of_one_agent_is_refused_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"env.t_max: ppo=3, random=null"):
        ca.main(["--protocol", "smoke", "--agents", "ppo", "random", "--out", str(tmp_path),
                 "--ppo-override", "agent.t_max=3"])  # fmt: skip
    assert not (tmp_path / "results.json").exists()


def test_protocol_commit_and_statistics_land_in_results(zoo_cache, tmp_path):
    out = tmp_path / "cmp"
    data = ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    stored = json.loads((out / "results.json").read_text())
    assert stored["protocol"] == data["protocol"] == ca.load_protocol("smoke")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=Path(ca.__file__).parent).stdout.strip()  # fmt: skip
    assert stored["commit"]["sha"] == (head or "unknown")
    assert [(r["seed"], r["protocol"]) for r in stored["runs"]] == [(0, "smoke"), (1, "smoke")]
    (comparison,) = stored["comparisons"]
    row = comparison["agents"]["random"]
    assert row["search"]["n"] == 2 and row["search"]["low"] <= row["search"]["mean"]
    assert row["test"]["mean"] == pytest.approx(sum(r["hv_test"] for r in stored["runs"]) / 2)
    assert comparison["references"]["test"] > 0
    assert (out / "hv_curve_z0_both.png").is_file()
    # the same folder under another protocol is refused, naming what changed
    with pytest.raises(ConfigError, match=r"another protocol \(protocol.budget: 4 -> 3\)"):
        ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out), "--budget", "3"])


def test_commit_is_unknown_outside_a_git_checkout(tmp_path):
    assert ca.git_commit(tmp_path) == {"sha": "unknown", "dirty": None}
