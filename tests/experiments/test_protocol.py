"""Protocols: seeds fixed and untuned, settings reaching every agent, one space per comparison."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from experiments import protocol as pr
from merge_env.errors import ConfigError


def test_protocols_fix_seeds_and_the_reported_one_is_untuned():
    tuning, heldout = pr.load_protocol("tuning"), pr.load_protocol("heldout")
    assert (tuning["purpose"], tuning["zoo_seeds"], tuning["search_seeds"]) == (
        "tuning", [0], list(range(10)))  # fmt: skip
    assert (heldout["purpose"], heldout["zoo_seeds"], heldout["search_seeds"]) == (
        "reported", [1, 2], list(range(100, 110)))  # fmt: skip
    assert heldout["env"] == tuning["env"] and heldout["budget"] == tuning["budget"]
    with pytest.raises(
        ConfigError, match=r"protocol.search_seeds: \[5\] also in protocol 'tuning'"
    ):
        pr.load_protocol("heldout", ["search_seeds=[5,100]"])
    with pytest.raises(ConfigError, match=r"protocol.zoo_seeds: \[0\]"):
        pr.load_protocol("heldout", ["zoo_seeds=[0]"])
    with pytest.raises(ConfigError, match="protocol.env.modes: not a setting of the env group"):
        pr.load_protocol("smoke", ["+env.modes=free"])


def test_the_protocol_reaches_every_agent_config():
    protocol = pr.load_protocol("smoke", ["env.mode=aligned", "anchors=false"])
    for agent in ("ppo", "random", "cmaes"):
        cfg, passed = pr.run_config(protocol, agent, 1, 0, "both")
        settings = pr.comparison_settings(cfg)
        assert settings["env.mode"] == "aligned"  # a genome agent's encoding counts as its mode
        assert settings["env.lattice_steps"] == 2 and settings["budget"] == 4
        assert settings["evaluator.cheap_examples"] == 4 and cfg.pool.seed == 0
        for key in pr.PASSED:
            assert passed[key] == (protocol[key] if key in cfg.agent else "unsupported")
            if key in cfg.agent:
                assert cfg.agent[key] == protocol[key]


def test_a_genome_encoding_is_the_space_it_searched():
    protocol = pr.load_protocol("smoke")  # env.mode: free
    cfg, _ = pr.run_config(protocol, "random", 0, 0, "both", ["agent.encoding=aligned"])
    assert pr.comparison_settings(cfg)["env.mode"] == "aligned"


def test_per_part_weights_are_part_of_the_space_for_every_agent():
    protocol = pr.load_protocol("smoke", ["env.weight_parts=[self_attn,mlp]"])
    cfg, _ = pr.run_config(protocol, "cmaes", 0, 0, "param")
    assert pr.comparison_settings(cfg)["env.weight_parts"] == ["self_attn", "mlp"]
    plain, _ = pr.run_config(pr.load_protocol("smoke"), "random", 0, 0, "param")
    assert pr.comparison_settings(plain)["env.weight_parts"] == []
    # a genome agent given another space by its own override is recorded with that space
    own, _ = pr.run_config(pr.load_protocol("smoke"), "random", 0, 0, "param",
                           ["agent.weight_parts=[mlp]"])  # fmt: skip
    assert pr.comparison_settings(own)["env.weight_parts"] == ["mlp"]
    # PPO searches them too (its merge action picks a lattice point per part)
    ppo, _ = pr.run_config(protocol, "ppo", 0, 0, "both")
    assert pr.comparison_settings(ppo)["env.weight_parts"] == ["self_attn", "mlp"]
    assert instantiate(ppo.agent).env_kwargs["weight_parts"] == ("self_attn", "mlp")
    with pytest.raises(ConfigError, match="agent.weight_parts"):  # refused before a run starts
        pr.run_config(protocol, "ppo", 0, 0, "both", ["agent.weight_parts=mlp"])


def _run(agent: str, level: str = "both", **settings) -> dict:
    return {
        "agent": agent,
        "level": level,
        "settings": {"env.mode": "free", "budget": 4, **settings},
    }


def test_agents_that_searched_different_spaces_are_refused():
    pr.check_one_space([_run("ppo"), _run("random"), _run("ppo", "param", **{"env.mode": "x"})])
    with pytest.raises(ConfigError, match=r"env.mode: ppo=\"free\", random=\"aligned\"") as err:
        pr.check_one_space([_run("ppo"), _run("random", **{"env.mode": "aligned", "budget": 8})])
    assert "budget: ppo=4, random=8" in str(err.value)


def test_commit_is_unknown_outside_a_git_checkout(tmp_path):
    assert pr.git_commit(tmp_path) == {"sha": "unknown", "dirty": None}


def test_the_commit_is_the_one_the_process_started_with(monkeypatch):
    """A long comparison records the code it imported, not what HEAD became while it ran."""
    monkeypatch.setattr(pr, "_STARTED_AT", None)
    first = pr.git_commit()
    monkeypatch.setattr(pr, "_read_commit", lambda cwd: {"sha": "moved-on", "dirty": False})
    assert pr.git_commit() == first != {"sha": "moved-on", "dirty": False}
