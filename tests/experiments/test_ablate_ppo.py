"""experiments/ablate_ppo.py: per-run figures, the variant-aware space check, the statistics; and
the protocol's space now holds the env's reward and weights keys."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from experiments import ablate_ppo as ab
from experiments import protocol as pr
from merge_env.errors import ConfigError


def _run(variant, seed, hv, **settings):
    return {
        "variant": variant, "agent": f"ppo-{variant}", "level": "both", "zoo_seed": 0,
        "seed": seed, "budget": 20, "hv": hv,
        "settings": {"env.reward": "front", "env.weights": "lattice", "budget": 20, **settings},
        "phases": {"anchors": 4, "offline": 2, "sweep": 2, "online": 10, "promote": 2},
        "hv_by_source": {"env": hv / 2, "anchor": hv / 4},
        "online": {"updates": 10 + seed, "stalled": seed == 1},
    }  # fmt: skip


def test_run_summary_splits_the_budget_and_the_hypervolume():
    s = ab.run_summary(_run("full", 1, 0.4))
    assert s["policy_share"] == pytest.approx(12 / 20)
    assert s["fallback_share"] == pytest.approx(2 / 20)
    assert s["stalled"] and s["updates"] == 11 and s["policy_hv_ratio"] == pytest.approx(0.5)


def test_variants_may_differ_only_in_their_own_setting():
    runs = [_run("full", 0, 1.0), _run("scalar_reward", 0, 1.0, **{"env.reward": "scalar"}),
            _run("continuous", 0, 1.0, **{"env.weights": "simplex"})]  # fmt: skip
    ab.check_variants(runs)
    with pytest.raises(ConfigError, match="env.weights"):
        ab.check_variants([*runs, _run("online_only", 1, 1.0, **{"env.weights": "simplex"})])


def test_ablation_tests_full_against_each_variant():
    runs = [_run("full", s, 1.0 + s) for s in range(5)]
    runs += [_run("offline_only", s, 0.1 * s) for s in range(5)]
    (result,) = ab.ablate(runs)
    rows = result["variants"]
    assert "full_vs" not in rows["full"]
    assert rows["offline_only"]["full_vs"]["p_mannwhitney"] < 0.05
    assert rows["full"]["figures"]["updates"] == {"mean": 12.0, "min": 10.0, "max": 14.0}
    # paired by seed: full higher on all 5 seeds, distinct differences: exact p = 2/32
    paired = rows["offline_only"]["full_vs_paired"]
    assert paired["seeds"] == [0, 1, 2, 3, 4] and paired["a_higher"] == 5
    assert paired["p_signed_rank"] == pytest.approx(2 / 32) and "full_vs_paired" not in rows["full"]


def test_the_paired_test_uses_only_the_seeds_both_ran():
    """A small, consistent gain is found by the paired test where seed-to-seed spread hides it
    from the unpaired one; a seed only one side ran is left out of the pairs."""
    runs = [_run("full", s, 1.0 + s + 0.01 * (s + 1)) for s in range(8)]
    runs += [_run("offline_only", s, 1.0 + s) for s in range(9)]
    (result,) = ab.ablate(runs)
    row = result["variants"]["offline_only"]
    assert row["full_vs"]["p_mannwhitney"] > 0.5
    assert row["full_vs_paired"]["seeds"] == list(range(8))
    assert row["full_vs_paired"]["p_signed_rank"] == pytest.approx(2 / 2**8)


def test_the_protocol_space_holds_reward_and_weights():
    protocol = pr.load_protocol("smoke", ["env.weights=simplex"])
    for agent in ("ppo", "random"):
        cfg, _ = pr.run_config(protocol, agent, 0, 0, "both")
        settings = pr.comparison_settings(cfg)
        assert settings["env.reward"] == "front" and settings["env.weights"] == "simplex"
        assert settings["agent.weights"] == "simplex"  # the genome agents encode it too
    with pytest.raises(ConfigError, match="env.reward"):
        pr.run_config(pr.load_protocol("smoke", ["env.reward=hv"]), "ppo", 0, 0, "both")


def test_one_seed_a_side_has_no_rank_test():
    (result,) = ab.ablate([_run("full", 0, 1.0), _run("offline_only", 0, 0.5)])
    assert "full_vs" not in result["variants"]["offline_only"]
    assert "full_vs_paired" not in result["variants"]["offline_only"]
    assert result["variants"]["offline_only"]["search"]["mean"] == 0.5


def test_every_variant_keeps_its_own_change_under_the_protocol():
    """A variant's override survives the protocol (online_only once set proposals=0, which the
    protocol's proposals: 200 silently undid, so it ran as full); one the protocol fixes is refused."""
    protocol = pr.load_protocol("smoke")
    full, _ = pr.run_config(protocol, "ppo", 0, 0, "both")
    for variant, (overrides, _keys) in ab.VARIANTS.items():
        cfg, _ = pr.run_config(protocol, "ppo", 0, 0, "both", overrides)
        for key, value in (o.split("=", 1) for o in overrides):
            assert str(OmegaConf.select(cfg, key)).lower() == value, variant
        assert variant == "full" or OmegaConf.to_container(cfg) != OmegaConf.to_container(full)
    with pytest.raises(ConfigError, match="agent.proposals"):
        pr.run_config(protocol, "ppo", 0, 0, "both", ["agent.proposals=0"])
    with pytest.raises(ConfigError, match="budget"):
        pr.run_config(protocol, "ppo", 0, 0, "both", ["budget=3"])


def test_seeds_run_apart_merge_into_one_ablation(tmp_path):
    """Each search seed's store (as one invocation per seed writes it) merged: the statistics of
    all five seeds, the paired test included, as if one invocation had run them."""
    import json

    protocol = pr.load_protocol("smoke")
    folders = []
    for seed in range(5):
        folder = tmp_path / f"s{seed}"
        folder.mkdir()
        # full higher on every seed, by distinct margins (an exact signed-rank p of 2/32)
        runs = [{**_run("full", seed, 1.0 + seed), "hv_test": 0.5},
                {**_run("ppo_only", seed, 0.9 + 0.99 * seed), "hv_test": 0.4}]  # fmt: skip
        folder.joinpath("results.json").write_text(json.dumps(
            {"protocol": {**protocol, "search_seeds": [seed]}, "runs": runs}))  # fmt: skip
        folders.append(str(folder))
    data = ab.main(["--merge", *folders, "--out", str(tmp_path / "all")])
    assert data["protocol"]["search_seeds"] == [0, 1, 2, 3, 4]
    (result,) = data["comparisons"]
    row = result["variants"]["ppo_only"]
    assert row["search"]["n"] == 5 and row["full_vs_paired"]["a_higher"] == 5
    assert row["full_vs_paired"]["p_signed_rank"] == pytest.approx(2 / 32)
    assert (tmp_path / "all" / "ablation_z0_both.md").is_file()
    # a merge without full has nothing to compare against
    with pytest.raises(ConfigError, match="include it"):
        ab.main(["--merge", *folders, "--variants", "ppo_only", "--out", str(tmp_path / "x")])
    with pytest.raises(ConfigError, match=r"--variants: no merged run of continuous"):
        ab.main(["--merge", *folders, "--variants", "full", "continuous",
                 "--out", str(tmp_path / "x")])  # fmt: skip
    assert not (tmp_path / "x").exists()
    assert data["missing"] == [] and data["merged_from"][0].endswith("s0/results.json")
