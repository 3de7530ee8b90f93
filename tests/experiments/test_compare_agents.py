"""experiments.compare_agents: protocols, one space per comparison, results that say what ran."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from experiments import compare_agents as ca
from experiments import protocol as pr
from merge_env.errors import ConfigError


@pytest.fixture
def zoo_cache(tiny_zoo, monkeypatch):
    """The tiny zoo the session built, found again by pool=tiny through the cache dir."""
    root = Path(tiny_zoo.base).parent
    assert root.name.startswith("zoo-")
    monkeypatch.setenv("MERGEGYM_CACHE", str(root.parent))


def test_rerun_in_the_same_folder_starts_from_nothing(zoo_cache, tmp_path):
    protocol = pr.load_protocol("smoke")
    first = ca.run_one(protocol, "random", 0, 0, "both", tmp_path)
    again = ca.run_one(protocol, "random", 0, 0, "both", tmp_path)
    assert 3 < first["spent"] <= protocol["budget"]
    # archive, cache and ledger all start empty: same spending, same curve, evaluations <= budget
    assert again["spent"] == first["spent"]
    assert again["curve"] == first["curve"]
    assert max(evals for evals, _ in again["curve"]) <= protocol["budget"]
    assert again["hv_test"] == first["hv_test"] > 0
    assert (tmp_path / "runs" / "z0__random__both__0" / "front_test.json").is_file()


def test_a_space_override_of_one_agent_is_refused_before_any_model_loads(tmp_path):
    with pytest.raises(ConfigError, match=r"env.t_max: ppo=3, random=null"):
        ca.main(["--protocol", "smoke", "--agents", "ppo", "random", "--out", str(tmp_path),
                 "--ppo-override", "agent.t_max=3"])  # fmt: skip
    assert not (tmp_path / "results.json").exists()


def test_protocol_commit_and_statistics_land_in_results(zoo_cache, tmp_path):
    out = tmp_path / "cmp"
    data = ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    stored = json.loads((out / "results.json").read_text())
    assert stored["protocol"] == data["protocol"] == pr.load_protocol("smoke")
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


def test_a_resumed_comparison_refuses_runs_made_with_other_agent_overrides(zoo_cache, tmp_path):
    out = tmp_path / "cmp"
    first = ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    run = first["runs"][0]
    assert run["agent_overrides"] == [] and run["agent_config"]["_target_"].endswith("RandomSearch")
    store = out / "results.json"
    data = json.loads(store.read_text())
    data["runs"][1]["agent_overrides"] = ["agent.batch=2"]
    store.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError,
        match=r"run \(0, 'random', 'both', 1\) was made with agent "
        r"overrides agent.batch=2, this invocation passes none",
    ):
        ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    # the same overrides, but a default changed since the run (its recorded config says so)
    data["runs"][1]["agent_overrides"] = []
    data["runs"][1]["agent_config"]["screen_keep"] = 0.5
    store.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"run \(0, 'random', 'both', 1\) was made with another "
                                          r"agent config .*agent.screen_keep: 0.5 -> 0.25"):  # fmt: skip
        ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    # a store from before overrides and configs were recorded resumes when none are passed...
    for r in data["runs"]:
        del r["agent_overrides"], r["agent_config"]
    store.write_text(json.dumps(data))
    again = ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(out)])
    assert [r["hv"] for r in again["runs"]] == [r["hv"] for r in first["runs"]]  # nothing re-run
    # ...and is refused when some are: it cannot say what its runs were made with
    for r in data["runs"]:
        r["agent"] = "ppo"
    store.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match="overrides not recorded, this invocation passes agent.bc_epochs=1"
    ):
        ca.main(["--protocol", "smoke", "--agents", "ppo", "--out", str(out),
                 "--ppo-override", "agent.bc_epochs=1"])  # fmt: skip


def test_one_seed_a_side_gets_its_interval_but_no_rank_test():
    def run(agent, hv):
        return {"agent": agent, "seed": 100, "zoo_seed": 1, "level": "both", "hv": hv,
                "hv_test": hv / 2, "curve": [[1, hv]], "references_hv": 0.1,
                "references_hv_test": 0.05, "passed": {}}  # fmt: skip

    (c,) = ca.compare([run("ppo", 0.3), run("cmaes", 0.2), run("random", 0.1)], budget=2)
    assert c["best_baseline"] == "cmaes"
    assert not any("vs_best" in row for row in c["agents"].values())
    assert c["agents"]["ppo"]["search"] == {"n": 1, "mean": 0.3, "low": 0.3, "high": 0.3}
    table = ca.comparison_table(c, {"name": "smoke", "purpose": "smoke"})
    assert list(table.columns[4].cells) == ["-", "(best)", "-", "-"]


def test_the_best_baseline_is_tested_on_both_splits_and_paired_by_seed():
    # ppo above cmaes on search, below it on test, on each of 6 seeds; the seed-to-seed spread
    # both share hides that from the unpaired tests, not from the paired one
    def run(agent, seed, hv, hv_test):
        return {"agent": agent, "seed": seed, "zoo_seed": 1, "level": "both", "hv": hv,
                "hv_test": hv_test, "curve": [[1, hv]], "references_hv": 0.1,
                "references_hv_test": 0.05, "passed": {}}  # fmt: skip

    runs = []
    for i, seed in enumerate(range(100, 106)):
        base = 0.5 + 0.05 * i
        runs += [run("cmaes", seed, base, base), run("ppo", seed, base + 0.01, base - 0.01)]
    (c,) = ca.compare(runs, budget=2)
    row = c["agents"]["ppo"]
    assert row["vs_best"]["baseline"] == row["vs_best_test"]["baseline"] == "cmaes"
    assert row["vs_best"]["p_mannwhitney"] > 0.5 and row["vs_best_test"]["p_mannwhitney"] > 0.5
    paired = row["vs_best_paired"]
    assert paired["search"]["a_higher"] == 6 and paired["test"]["b_higher"] == 6
    assert paired["search"]["p_signed_rank"] < 0.05 and paired["test"]["p_signed_rank"] < 0.05
    table = ca.comparison_table(c, {"name": "heldout", "purpose": "reported"})
    cells = dict(zip(table.columns[0].cells, table.columns[6].cells))
    assert cells["ppo"] == "0.0143 (6/6); 0.0143 (0/6)" and cells["cmaes"] == "(best)"


def test_runs_split_by_seed_merge_into_the_comparison_made_in_one_go(zoo_cache, tmp_path):
    whole = ca.main(["--protocol", "smoke", "--agents", "random", "--out", str(tmp_path / "all")])
    for seed in (0, 1):
        ca.main(["--protocol", "smoke", "--set", f"search_seeds=[{seed}]", "--agents", "random",
                 "--out", str(tmp_path / f"s{seed}")])  # fmt: skip
    merged = ca.main(["--merge", str(tmp_path / "s1"), str(tmp_path / "s0"),
                      "--out", str(tmp_path / "merged")])  # fmt: skip
    assert {k: v for k, v in merged["protocol"].items() if k != "overrides"} == {
        k: v for k, v in whole["protocol"].items() if k != "overrides"
    }  # fmt: skip
    assert merged["protocol"]["search_seeds"] == [0, 1] and merged["missing"] == []
    # the overrides rebuild the merged protocol, not the last store's seeds
    assert pr.load_protocol("smoke", merged["protocol"]["overrides"]) == {
        **whole["protocol"], "overrides": merged["protocol"]["overrides"]}  # fmt: skip
    assert sorted((r["seed"], r["hv"], r["hv_test"]) for r in merged["runs"]) == sorted(
        (r["seed"], r["hv"], r["hv_test"]) for r in whole["runs"]
    )  # fmt: skip
    (m,), (w,) = merged["comparisons"], whole["comparisons"]
    assert m["agents"]["random"]["search"] == w["agents"]["random"]["search"]
    assert m["agents"]["random"]["test"] == w["agents"]["random"]["test"]
    assert merged["merged_from"] == [str(tmp_path / d / "results.json") for d in ("s1", "s0")]
    assert json.loads((tmp_path / "merged" / "results.json").read_text()) == merged
    assert (tmp_path / "merged" / "hv_curve_z0_both.png").is_file()
    table = (tmp_path / "merged" / "comparison_z0_both.md").read_text()
    assert "random" in table and "references (inputs)" in table and "zoo seed 0" in table


def _store(folder: Path, protocol: dict, runs: list) -> Path:
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"protocol": protocol, "runs": runs}))
    return folder


def _run(seed: int, hv: float) -> dict:
    return {"agent": "random", "seed": seed, "zoo_seed": 0, "level": "both", "hv": hv,
            "hv_test": hv / 2}  # fmt: skip


def test_merge_refuses_other_protocols_clashing_runs_and_missing_stores(tmp_path):
    smoke = pr.load_protocol("smoke")
    a = _store(tmp_path / "a", {**smoke, "search_seeds": [0]}, [_run(0, 0.3)])
    b = _store(tmp_path / "b", {**smoke, "search_seeds": [1], "budget": 8}, [_run(1, 0.2)])
    c = _store(tmp_path / "c", {**smoke, "search_seeds": [0]}, [_run(0, 0.4)])
    d = _store(tmp_path / "d", {**smoke, "search_seeds": [0]}, [_run(0, 0.3)])
    with pytest.raises(ConfigError, match=r"b/results.json: made under another protocol than "
                                          r".*a/results.json \(protocol.budget: 4 -> 8\)"):  # fmt: skip
        ca.merge_stores([a, b], ca.comparison_key)
    with pytest.raises(ConfigError, match=r"c/results.json: run \(0, 'random', 'both', 0\) is in "
                                          r".*a/results.json too, with other figures"):  # fmt: skip
        ca.merge_stores([a, c], ca.comparison_key)
    protocol, runs = ca.merge_stores([a, d], ca.comparison_key)  # the same run twice: kept once
    assert runs == [_run(0, 0.3)] and protocol["search_seeds"] == [0]
    # one label's runs split between stores must have been made with the same agent overrides
    e = _store(tmp_path / "e0", {**smoke, "search_seeds": [0]},
               [{**_run(0, 0.3), "agent_overrides": []}])  # fmt: skip
    f = _store(tmp_path / "f1", {**smoke, "search_seeds": [1]},
               [{**_run(1, 0.2), "agent_overrides": ["agent.batch_size=2"]}])  # fmt: skip
    with pytest.raises(ConfigError, match=r"f1/results.json: run \(0, 'random', 'both', 1\) was "
                                          r"made with agent overrides agent.batch_size=2, its "
                                          r"label's runs in .*e0/results.json with none"):  # fmt: skip
        ca.merge_stores([e, f], ca.comparison_key)
    assert len(ca.merge_stores([e, a], ca.comparison_key)[1]) == 1  # unrecorded: not checked
    # ... and with one agent config, but for the keys that differ per run (seed, level)
    g = _store(
        tmp_path / "g0",
        {**smoke, "search_seeds": [0]},
        [{**_run(0, 0.3), "agent_config": {"seed": 0, "level": "both", "screen_keep": 0.25}}],
    )
    h = _store(
        tmp_path / "h1",
        {**smoke, "search_seeds": [1]},
        [{**_run(1, 0.2), "agent_config": {"seed": 1, "level": "both", "screen_keep": 0.5}}],
    )
    i = _store(
        tmp_path / "i1",
        {**smoke, "search_seeds": [1]},
        [{**_run(1, 0.2), "agent_config": {"seed": 1, "level": "param", "screen_keep": 0.25}}],
    )
    with pytest.raises(
        ConfigError,
        match=r"h1/results.json: run \(0, 'random', 'both', 1\) was "
        r"made with another agent config than its label's runs "
        r"in .*g0/results.json \(agent.screen_keep: 0.25 -> 0.5\)",
    ):
        ca.merge_stores([g, h], ca.comparison_key)
    assert len(ca.merge_stores([g, i], ca.comparison_key)[1]) == 2
    twice = _store(tmp_path / "twice", smoke, [_run(0, 0.3), _run(0, 0.3)])
    with pytest.raises(ConfigError, match=r"twice/results.json: run .* is in it twice"):
        ca.merge_stores([twice], ca.comparison_key)
    other = _store(tmp_path / "other", smoke, [{k: v for k, v in _run(0, 0.3).items()
                                                if k != "agent"}])  # fmt: skip
    with pytest.raises(ConfigError, match=r"other/results.json: run #0 lacks 'agent'"):
        ca.merge_stores([other], ca.comparison_key)
    no_seeds = _store(tmp_path / "no_seeds", {k: v for k, v in smoke.items()
                                              if k != "search_seeds"}, [])  # fmt: skip
    with pytest.raises(ConfigError, match=r"no_seeds/results.json: its protocol has no list of "
                                          r"search_seeds"):  # fmt: skip
        ca.merge_stores([no_seeds], ca.comparison_key)
    with pytest.raises(ConfigError, match=r"nowhere/results.json: cannot read the results"):
        ca.merge_stores([a, tmp_path / "nowhere"], ca.comparison_key)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "results.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match=r"e/results.json: not a results.json"):
        ca.merge_stores([tmp_path / "e"], ca.comparison_key)
    # the protocol comes from the stores, and no store is overwritten
    with pytest.raises(ConfigError, match=r"--merge takes the protocol .*drop --protocol, --set"):
        ca.main(["--merge", str(a), "--protocol", "smoke", "--set", "budget=3",
                 "--out", str(tmp_path / "m")])  # fmt: skip
    with pytest.raises(ConfigError, match=r"drop --cheap-examples"):
        ca.main(["--merge", str(a), "--cheap-examples", "0", "--out", str(tmp_path / "m")])
    with pytest.raises(ConfigError, match=r"--out .*a is one of the folders merged"):
        ca.main(["--merge", str(a), str(d), "--out", str(a)])
    with pytest.raises(ConfigError, match=r"c/results.json holds runs of its own"):
        ca.main(["--merge", str(a), str(d), "--out", str(c)])
    with pytest.raises(ConfigError, match=r"name the folder .* with --out"):
        ca.main(["--merge", str(a)])
    with pytest.raises(ConfigError, match=r"--agents: no merged run of ppo \(the stores hold "
                                          r"random\)"):  # fmt: skip
        ca.main(["--merge", str(a), "--agents", "ppo", "--out", str(tmp_path / "m")])
    assert json.loads((a / "results.json").read_text())["runs"] == [_run(0, 0.3)]
    assert json.loads((c / "results.json").read_text())["runs"] == [_run(0, 0.4)]
    assert not (tmp_path / "m").exists()


def test_a_merge_is_the_same_in_any_order_and_names_the_runs_it_lacks(tmp_path):
    smoke = pr.load_protocol("smoke")
    a = _store(tmp_path / "a", {**smoke, "zoo_seeds": [None], "search_seeds": [1]},
               [{**_run(1, 0.1), "zoo_seed": None}])  # fmt: skip
    b = _store(tmp_path / "b", {**smoke, "zoo_seeds": [2], "search_seeds": [0, 1]},
               [{**_run(s, 0.1 + s), "zoo_seed": 2} for s in (0, 1)])  # fmt: skip
    ab, _ = ca.merge_stores([a, b], ca.comparison_key)
    ba, runs = ca.merge_stores([b, a], ca.comparison_key)
    assert ab == ba and ab["zoo_seeds"] == [2, None] and ab["search_seeds"] == [0, 1]
    assert ab["overrides"] == ["zoo_seeds=[2,null]", "search_seeds=[0,1]"]
    # zoo seed None never ran search seed 0: the merge says so and keeps it in results.json
    assert ca.missing_runs(ab, runs, ["random"], ca.comparison_key) == [
        (None, "random", "both", 0)]  # fmt: skip
