"""experiments.figures: every section's numbers come from its runs, a second run resumes, a
failing section is recorded and the command goes on, exiting non-zero."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import figures, stats
from experiments.build_zoo import core_digest, score_zoo
from merge_env.pools.cache import describe_machine
from merge_env.pools.regime import task_vectors

# the smoke protocol (tiny zoo, budget 4, search seeds 0 and 1), cut to what each section needs
ARGS = ["--protocol", "smoke", "--agents", "random", "cmaes", "--variants", "full",
        "offline_only", "--moe-override", "hetero.steps=5"]  # fmt: skip


@pytest.fixture
def zoo_cache(tiny_zoo, monkeypatch):
    """The tiny zoo the session built, found again by pool=tiny through the cache dir."""
    monkeypatch.setenv("MERGEGYM_CACHE", str(Path(tiny_zoo.root).parent))


def _load(out: Path) -> tuple[dict, str]:
    return json.loads((out / "figures.json").read_text()), (out / "figures.md").read_text()


def test_figures_come_from_the_runs_resume_and_record_failures(zoo_cache, tiny_zoo, tmp_path,
                                                               monkeypatch):  # fmt: skip
    out = tmp_path / "figs"
    assert figures.main([*ARGS, "--out", str(out)]) == 0
    data, md = _load(out)
    sections = data["sections"]
    assert list(sections) == list(figures.SECTIONS)
    assert all(s["status"] == "done" for s in sections.values())
    assert data["protocol"]["name"] == "smoke" and data["machine"]["torch_threads"] == 1
    assert data["machine"]["cpu"] and data["machine"]["torch_cpu_capability"]
    assert data["commit"]["sha"] in md and "smoke" in md
    for title in figures.TITLES.values():
        assert f"## {title}" in md

    # zoo: the table is score_zoo's, cell for cell
    (zoo,) = sections["zoo"]["result"]["zoos"]
    expected = {row: {t: vars(s) for t, s in by.items()} for row, by in score_zoo(tiny_zoo).items()}
    assert zoo["scores"] == expected and zoo["root"] == str(tiny_zoo.root)
    # which weights the figures stand on: a user's digest equal to this one is the same pool
    assert zoo["weights_digest"] == core_digest(tiny_zoo)
    assert f"weights sha256 `{zoo['weights_digest']}`" in md
    assert zoo["trained_on"] == describe_machine(tiny_zoo.built_on) and zoo["trained_on"] in md
    # trained here, not installed from a shipped copy; a shipped one is named as such
    assert zoo["shipped"] is False and "shipped with MergeGym" not in md
    shipped_md = figures.zoo_markdown({**sections["zoo"]["result"], "zoos": [{**zoo, "shipped": True}]},
                                      data["protocol"])  # fmt: skip
    assert any(
        "the copy shipped with MergeGym, installed in the cache at" in line for line in shipped_md
    )
    add = expected["expert:add"]["add"]
    assert f"| expert:add | {add['exact_match']:.3f} / {add['token_accuracy']:.3f} |" in md
    # the regime's share intervals and task vectors travel into figures.json
    regime = zoo["regime"]
    assert set(regime["kept_intervals"]) == set(regime["kept"])
    vectors = task_vectors(tiny_zoo.base, tiny_zoo.experts)
    assert regime["task_vectors"]["relative"] == vectors.relative
    assert set(regime["task_vectors"]["cosine"]["body"]) == {
        f"{a}-{b}" for a, b in vectors.cosine["body"]
    }

    # compare and ablate: the statistics their own results.json hold, drawn in the markdown
    stored = json.loads((out / "compare" / "results.json").read_text())
    assert sections["compare"]["result"]["comparisons"] == stored["comparisons"]
    assert [r["seed"] for r in stored["runs"]] == [0, 1, 0, 1]  # random, cmaes x search seeds
    row = stored["comparisons"][0]["agents"]["cmaes"]
    assert f"| cmaes | 2 | {stats.format_ci(row['search'])} | {stats.format_ci(row['test'])}" in md
    ablated = json.loads((out / "ablate" / "results.json").read_text())
    assert sections["ablate"]["result"]["ablations"] == ablated["comparisons"]
    assert set(ablated["comparisons"][0]["variants"]) == {"full", "offline_only"}

    # main, recycle, moe: one run folder per (zoo seed, seed); the tables are their summaries'
    main_runs = [json.loads((out / "main" / f"z0__{s}" / "summary.json").read_text())
                 for s in (0, 1)]  # fmt: skip
    hv = stats.format_ci(stats.summarise([r["hypervolume_test"] for r in main_runs]))
    assert f"| front HV, test | 2 | {hv} |" in md
    # HM3's own baseline: the references + the plain grid the main job scores after its search
    vs_grid = [r["hypervolume_test"] / r["grid_hypervolume_test"] for r in main_runs]
    assert (
        f"| front / (references + grid), test | 2 | {stats.format_ci(stats.summarise(vs_grid))} |"
        in md
    )
    # and the grid picked on search, as the front is
    vs_picked = [r["hypervolume_test"] / r["grid_front_hypervolume_test"] for r in main_runs]
    picked = "front / (references + grid) picked on search, test"
    assert f"| {picked} | 2 | {stats.format_ci(stats.summarise(vs_picked))} |" in md
    # the ceiling: how far a perfect model, hence any front, could beat the references at all
    most = [r["hypervolume_ceiling"] / r["reference_hypervolume_test"] for r in main_runs]
    assert all(m >= f for m, f in zip(most, (r["hypervolume_test"] / r["reference_hypervolume_test"]
                                            for r in main_runs)))  # fmt: skip
    row = f"| perfect model / references, test | 2 | {stats.format_ci(stats.summarise(most))} |"
    assert row in md
    share = [(r["hypervolume_test"] - r["reference_hypervolume_test"])
             / (r["hypervolume_ceiling"] - r["reference_hypervolume_test"]) for r in main_runs]  # fmt: skip
    row = f"| front's share of the headroom, test | 2 | {stats.format_ci(stats.summarise(share))} |"
    assert row in md
    assert [r["hypervolume_search"] for r in sections["main"]["result"]["runs"]] == [
        r["hypervolume_search"] for r in main_runs
    ]
    recycled = [json.loads((out / "recycle" / f"z0__{s}" / "summary.json").read_text())
                for s in (0, 1)]  # fmt: skip
    macro = [r["rows"]["optimised"]["test"]["macro"] for r in recycled]
    assert f"| optimised | 2 | {stats.format_ci(stats.summarise(macro), 3)} |" in md
    moe = json.loads((out / "moe" / "z0__0" / "moe_results.json").read_text())
    tok = moe["macro"]["ppl separate-attn"]["token_accuracy"]
    assert (
        f"| ppl separate-attn | 1 | {moe['macro']['ppl separate-attn']['exact_match']:.3f} | {tok:.3f} |"
        in md
    )

    # moe_text: the same job on the whole-text zoo (its own fingerprint, built on first use),
    # with each sequence router's share of prompts sent to their own expert
    text = json.loads((out / "moe_text" / "z0__0" / "moe_results.json").read_text())
    built = sections["moe_text"]["result"]["zoos"]["0"]  # built before the runs, in this process
    assert built["loss_on"] == "text" and f"`{built['weights_digest']}`" in md
    assert text["pool"] == "zoo-tiny-text" and moe["pool"] == "zoo-tiny"
    assert text["macro"] != moe["macro"]  # other models
    share, per = figures.routing_share(text["confusion"]["ppl separate-attn"])
    text_md = md.split("## MergeME on whole-text zoos")[1]
    assert f"- z0/s0 ppl separate-attn: {share:.3f} (" in text_md and set(per) == set(text["tasks"])
    assert "Sequence routing: share of test prompts" in text_md

    # a second run resumes: every finished section is skipped, nothing runs again
    def boom(ctx):
        raise AssertionError("a finished section ran again")

    for name in figures.SECTIONS:
        monkeypatch.setitem(figures.RUNNERS, name, boom)
    assert figures.main([*ARGS, "--out", str(out)]) == 0
    again, _ = _load(out)
    assert again["sections"] == sections

    # a failing section is recorded, the next one still runs, the exit status says so
    ran = []

    def fails(ctx):
        raise RuntimeError("the recycling pool went missing")

    monkeypatch.setitem(figures.RUNNERS, "recycle", fails)
    monkeypatch.setitem(figures.RUNNERS, "moe", lambda ctx: ran.append("moe") or {"runs": []})
    assert figures.main([*ARGS, "--out", str(out), "--only", "recycle,moe", "--force"]) == 1
    failed, md = _load(out)
    assert ran == ["moe"]
    entry = failed["sections"]["recycle"]
    assert entry["status"] == "failed"
    assert entry["error"] == "RuntimeError: the recycling pool went missing"
    assert "**FAILED**: `RuntimeError: the recycling pool went missing`" in md
    assert failed["sections"]["zoo"] == sections["zoo"]  # the other sections are kept
    # the next run retries it (its runs are on disk, so it only reads them back)
    monkeypatch.setitem(figures.RUNNERS, "recycle", figures.run_recycle)
    assert figures.main([*ARGS, "--out", str(out), "--only", "recycle"]) == 0
    retried, md = _load(out)
    assert retried["sections"]["recycle"]["result"] == sections["recycle"]["result"]
    assert "FAILED" not in md

    # --jobs 2: the same runs in two worker processes give the same figures, number for number
    # (compare split into one store per search seed and merged; main's runs spread over workers)
    par = tmp_path / "par"
    for name in ("compare", "main"):
        monkeypatch.setitem(figures.RUNNERS, name, getattr(figures, f"run_{name}"))
    assert figures.main([*ARGS, "--out", str(par), "--only", "compare,main", "--jobs", "2"]) == 0
    pdata, _ = _load(par)
    assert pdata["jobs"] == 2
    merged = json.loads((par / "compare" / "results.json").read_text())
    assert sorted(Path(f).parent.name for f in merged["merged_from"]) == ["z0__0", "z0__1"]
    assert pdata["sections"]["compare"]["result"]["comparisons"] == stored["comparisons"]

    def figures_of(runs):
        return [{k: v for k, v in r.items() if k not in ("folder", "wall_s")} for r in runs]

    assert figures_of(pdata["sections"]["main"]["result"]["runs"]) == figures_of(
        sections["main"]["result"]["runs"]
    )
    # fewer agents in the same folder: the part stores still hold cmaes's runs, and the merge
    # must analyse only the agents asked for, as --jobs 1 does
    narrow = [a for a in ARGS if a != "cmaes"]
    assert figures.main([*narrow, "--out", str(par), "--only", "compare", "--jobs", "2"]) == 0
    ndata, _ = _load(par)
    comparisons = json.dumps(ndata["sections"]["compare"]["result"]["comparisons"])
    assert "random" in comparisons and "cmaes" not in comparisons


def test_another_protocol_in_the_same_folder_and_a_bad_section_are_refused(tmp_path, capsys):
    out = tmp_path / "figs"
    assert figures.main(["--protocol", "smoke", "--out", str(out), "--only", "zoo,plots"]) == 2
    assert "--only: ['plots']" in capsys.readouterr().err
    out.mkdir()
    (out / "figures.json").write_text(json.dumps({"protocol": {"name": "smoke", "budget": 3}}))
    assert figures.main(["--protocol", "smoke", "--out", str(out), "--only", "zoo"]) == 2
    assert "protocol.budget: 3 -> 4" in capsys.readouterr().err
    assert figures.main(["--protocol", "smoke", "--out", str(out), "--jobs", "0"]) == 2
    assert "--jobs: 0 must be >= 1" in capsys.readouterr().err
    # a comparison begun in one process is not merged over by --jobs (its runs would be lost)
    fresh = tmp_path / "begun"
    (fresh / "compare").mkdir(parents=True)
    (fresh / "compare" / "results.json").write_text(json.dumps({"protocol": {}, "runs": []}))
    assert figures.main(["--protocol", "smoke", "--out", str(fresh), "--only", "compare",
                         "--jobs", "2"]) == 1  # fmt: skip
    failed = json.loads((fresh / "figures.json").read_text())["sections"]["compare"]
    assert "its runs were made with --jobs 1" in failed["error"]


def test_compare_defaults_to_every_agent_config():
    # the held-out agent table (docs/figures.md) has every agent; a new conf/agent/<name>.yaml joins it
    conf = Path(figures.__file__).resolve().parents[1] / "conf" / "agent"
    assert sorted(figures.AGENTS) == sorted(p.stem for p in conf.glob("*.yaml"))
    assert figures.parse([]).agents == list(figures.AGENTS)


def test_moe_claims_are_matched_by_their_text_not_their_position():
    def run(zoo, orderings):
        macro = {"dense ties": {"exact_match": 0.5, "token_accuracy": 0.6}}
        ordering = [{"claim": c, "metric": "exact_match", "values": v, "holds": h, "verdict": w}
                    for c, v, h, w in orderings]  # fmt: skip
        return {"zoo_seed": zoo, "seed": 100, "split": "test", "macro": macro, "ordering": ordering}

    a, b = "x > y", "p > q, r"
    runs = [run(1, [(a, [0.6, 0.5], True, "holds"), (b, [0.2, 0.3, 0.1], False, "does NOT hold")]),
            run(2, [(b, [0.4, 0.3, 0.1], True, "holds")])]  # fmt: skip
    text = "\n".join(figures.moe_markdown({"runs": runs}, {}))
    assert "- x > y [exact_match]: holds in 1 of 1 runs (" in text  # no intervals recorded
    assert "- p > q, r [exact_match]: holds in 1 of 2 runs (" in text
    runs[1]["ordering"][0].update(intervals=[[0.01, 0.2], [-0.1, 0.3]], significant=False)
    runs[0]["ordering"][1].update(intervals=[[-0.2, 0.1], [0.1, 0.2]], significant=False)
    text = "\n".join(figures.moe_markdown({"runs": runs}, {}))
    assert "- p > q, r [exact_match]: holds in 1 of 2 runs, every paired 95 % interval above 0 " \
           "in 0 of 2 (" in text  # fmt: skip
    runs[1]["ordering"][0].update(intervals=[[0.01, 0.2], [0.05, 0.3]], significant=True)
    text = "\n".join(figures.moe_markdown({"runs": runs}, {}))
    assert "every paired 95 % interval above 0 in 1 of 2 (" in text


def test_the_zoo_section_builds_the_zoo_the_pool_config_names(tiny_zoo, monkeypatch):
    """The pool's task kinds and loss reach the zoo section's build, as they reach every job's
    pool (merge_env.pools.spec.zoo_pool_config), so figures.md describes the zoo the jobs ran on."""
    from omegaconf import OmegaConf

    asked = []

    def build(config, *args, **kwargs):
        asked.append(config)
        return tiny_zoo

    monkeypatch.setattr(figures, "build_zoo", build)
    pool = OmegaConf.create({"_target_": figures.ZOO_POOL, "preset": "tiny", "seed": 3, "cache_dir": None,
                             "tasks": ["add", "atbash", "cipher"], "loss_on": "text"})  # fmt: skip
    _, info = figures._build_pool(pool, 3)  # the seed the pool config holds, as the jobs use
    (config,) = asked
    assert (config.seed, config.tasks, config.loss_on) == (3, ("add", "atbash", "cipher"), "text")
    assert info["task_kinds"] == ["add", "atbash", "cipher"] and info["loss_on"] == "text"


def test_routing_share_and_moe_text_on_a_pool_without_whole_text_models(tmp_path):
    confusion = {"a": {"a": 3, "b": 1}, "b": {"a": 2, "b": 2}}
    assert figures.routing_share(confusion) == (5 / 8, {"a": 0.75, "b": 0.5})
    import argparse

    ctx = figures.Context({"pool": "smollm2"}, argparse.Namespace(), tmp_path)
    result = figures.run_moe_text(ctx)  # SmolLM2's pool config has no loss_on: no run, no build
    assert (
        result["runs"] == []
        and "pool=smollm2 has no whole-text variant" in result["not_applicable"]
    )
    assert figures.moe_text_markdown(result, {})[0].startswith("Not applicable: pool=smollm2")
    assert not (tmp_path / "moe_text").exists()


def _count_job(ctx, zoo_seed, seed, folder):
    """A job section's run: counts its calls in the folder's summary."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"ran": ctx.args.moe_override}))


def test_a_job_section_runs_a_folder_again_when_its_settings_changed(tmp_path):
    import argparse

    args = argparse.Namespace(moe_override=["top_k=1"], moe_domains_override=[], moe_seeds=[5],
                              force=False, jobs=1,
                              agents=[], variants=[], main_agent="ppo", job_seeds=None,
                              main_override=[], recycle_override=[])  # fmt: skip
    ctx = figures.Context({"zoo_seeds": [0], "search_seeds": [5]}, args, tmp_path)
    folder = tmp_path / "moe" / "z0__5"

    def runs():
        return [r["ran"] for r in figures._job_runs(ctx, "moe", [5], "summary.json", _count_job)]

    assert runs() == [["top_k=1"]]
    stamp = json.loads((folder / figures.RUN_PARAMS).read_text())
    assert stamp == {"overrides": ["top_k=1"]}  # the seed list names the folders: left out
    (folder / "summary.json").write_text(json.dumps({"ran": "kept"}))
    assert runs() == ["kept"]  # the same settings: not run again
    args.moe_override = ["top_k=2"]
    assert runs() == [["top_k=2"]]  # other settings: the folder emptied and run again
    # a folder from before run folders kept their settings: the section's last record decides
    (folder / figures.RUN_PARAMS).unlink()
    (folder / "summary.json").write_text(json.dumps({"ran": "old"}))
    ctx.previous = {"moe": {"seeds": [5], "overrides": ["top_k=2"]}}
    assert runs() == ["old"]
    (folder / figures.RUN_PARAMS).unlink()
    ctx.previous = {"moe": {"seeds": [5, 6], "overrides": ["top_k=1"]}}
    assert runs() == [["top_k=2"]]


def test_moe_domains_runs_on_a_smollm2_protocol_only(tiny_domain_seed, tmp_path, monkeypatch):
    """The real-domain section: not applicable to a zoo protocol; on a SmolLM2 protocol each
    zoo seed's domain pool is built first (here a tiny seed model and corpus stand in for
    SmolLM2 and the standard library), MergeME runs on it at batch 16, and figures.md shows its
    claims on the continuation's log-likelihood."""
    import argparse

    from merge_env.pools import domains
    from tests.pools.test_domains import SMALL, _corpus

    args = argparse.Namespace(moe_seeds=None, force=False, jobs=1, threads=1, agents=[],
                              variants=[], main_agent="ppo", job_seeds=None, main_override=[],
                              recycle_override=[], moe_override=[], moe_domains_override=[])  # fmt: skip
    zoo = figures.Context({"pool": "tiny", "zoo_seeds": [0], "search_seeds": [7]}, args, tmp_path)
    result = figures.run_moe_domains(zoo)
    assert result["runs"] == [] and "pool=tiny is not SmolLM2" in result["not_applicable"]
    assert figures.moe_domains_markdown(result, {})[0].startswith("Not applicable: pool=tiny")

    monkeypatch.setattr(domains, "load_corpus", lambda names: _corpus())
    # the domain pool's own overrides; --moe-override (the other MoE sections') is not applied
    args.moe_override = ["pool.n_test=999"]
    args.moe_domains_override = ["router_prompts=3", "routers=[hidden_mean]",
                                 *[f"pool.{k}={v}" for k, v in SMALL.items()]]  # fmt: skip
    # the SmolLM2 pool's cache carries over to the domain pool; its other settings do not
    protocol = {"pool": "smollm2", "zoo_seeds": [0], "search_seeds": [7], "fidelity": {},
                "pool_settings": {"cache_dir": str(tmp_path / "cache"), "lora_rank": 4}}  # fmt: skip
    ctx = figures.Context(protocol, args, tmp_path / "figs")
    result = figures.run_moe_domains(ctx)
    (run,) = result["runs"]
    assert (run["zoo_seed"], run["seed"], run["pool"]) == (0, 7, "smollm2_domains")
    done = json.loads((Path(run["folder"]) / "moe_results.json").read_text())
    assert done["config"]["batch_size"] == figures.DOMAINS_BATCH and done["config"]["seed"] == 7
    assert done["config"]["pool"]["seed"] == 0 and done["config"]["pool"]["lora_rank"] == 8
    assert done["config"]["pool"]["n_test"] == SMALL["n_test"]
    pool = result["pools"]["0"]
    assert Path(pool["root"]).parent == tmp_path / "cache" and pool["weights_digest"]
    text = "\n".join(figures.moe_domains_markdown(result, protocol))
    assert "- domain pool seed 0 (`domains-" in text and "macro loglik" in text
    assert "macro EM" not in text  # the claims are on log-likelihood and token accuracy
    assert "ppl separate-attn > ppl merged-attn (ties), dense ties [loglik]: holds in" in text
    # a second call finds the pool and the run: the same pool, its run not scored again
    again = figures.run_moe_domains(ctx)
    assert again["pools"]["0"]["root"] == pool["root"]
    assert again["runs"][0]["seconds"] == run["seconds"]
