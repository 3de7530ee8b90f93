"""Tests for merge_env/pools/zoo.py: the tiny zoo builds, loads, is deterministic, caches, and has trade-offs."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools import zoo as zoo_module
from merge_env.pools.cache import build_machine, default_cache_dir, describe_machine, weights_digest
from merge_env.pools.zoo import ZOO_VERSION, ZooConfig, build_zoo, load_zoo
from merge_env.scoring.tasks.synthetic import make_task
from merge_env.search.recipe import BASE


def _all_dirs(zoo) -> list[Path]:
    return list(zoo.checkpoints().values())


def test_tiny_zoo_layout(tiny_zoo):
    config = ZooConfig.preset("tiny")
    assert set(tiny_zoo.experts) == set(config.tasks)
    assert [t.name for t in tiny_zoo.tasks] == list(config.tasks)
    assert len(tiny_zoo.recycling) >= 6
    assert tiny_zoo.odd_expert_task in config.tasks
    assert tiny_zoo.root.name == f"zoo-{config.fingerprint()}"
    for task in tiny_zoo.tasks:
        assert len(task.search) == config.n_search and len(task.test) == config.n_test
    manifest = json.loads((tiny_zoo.root / "zoo.json").read_text())
    assert ZooConfig.from_dict(manifest["config"]) == config
    assert load_zoo(tiny_zoo.root) == tiny_zoo


def test_every_dir_loads_as_hf_checkpoint(tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_zoo.tokenizer_dir)
    prompt = tiny_zoo.tasks[0].test[0].prompt
    widths = set()
    for path in _all_dirs(tiny_zoo):
        for name in ("model.safetensors", "config.json", "generation_config.json"):
            assert (path / name).is_file(), f"{path} lacks {name}"
        model = AutoModelForCausalLM.from_pretrained(path)
        tok = AutoTokenizer.from_pretrained(path)
        assert model.config.model_type == "llama"
        assert tok(prompt)["input_ids"] == reference(prompt)["input_ids"]
        assert model.config.vocab_size == len(tok)
        assert model.generation_config.eos_token_id == tok.eos_token_id
        widths.add(model.config.hidden_size)
    odd = AutoModelForCausalLM.from_pretrained(tiny_zoo.odd_expert).config
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base).config
    assert (odd.hidden_size, odd.num_hidden_layers) != (base.hidden_size, base.num_hidden_layers)
    assert len(widths) == 2


def test_same_seed_gives_identical_tensors(tiny_zoo, tmp_path):
    again = build_zoo(ZooConfig.preset("tiny"), tmp_path, progress=False, extras=True)
    assert again.root != tiny_zoo.root and len(_all_dirs(again)) == len(_all_dirs(tiny_zoo))
    for first, second in zip(_all_dirs(tiny_zoo), _all_dirs(again)):
        a, b = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{first.name}: {key} differs between builds"


def test_checkpoints_differ_from_each_other(tiny_zoo):
    key = "model.layers.0.mlp.down_proj.weight"
    same_shape = [p for p in _all_dirs(tiny_zoo) if p != tiny_zoo.odd_expert]
    values = [load_file(p / "model.safetensors")[key] for p in same_shape]
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            assert not torch.equal(values[i], values[j]), (same_shape[i], same_shape[j])


def test_second_build_comes_from_cache_without_training(tiny_zoo, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached zoo was trained again")

    monkeypatch.setattr(zoo_module, "finetune", no_training)
    again = build_zoo(ZooConfig.preset("tiny"), tiny_zoo.root.parent, progress=False)
    assert again == tiny_zoo


def test_expert_beats_base_on_its_own_task(tiny_zoo):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from merge_env.scoring.evaluate import Evaluator

    evaluator = Evaluator(AutoTokenizer.from_pretrained(tiny_zoo.tokenizer_dir))
    tasks = {t.name: t for t in tiny_zoo.tasks}
    base = AutoModelForCausalLM.from_pretrained(tiny_zoo.base)
    for name, path in tiny_zoo.experts.items():
        expert = AutoModelForCausalLM.from_pretrained(path)
        own = evaluator.score(expert, tasks[name], "test").token_accuracy
        assert own > evaluator.score(base, tasks[name], "test").token_accuracy, name


def test_interrupted_build_leaves_no_zoo(tmp_path, monkeypatch):
    config = dataclasses.replace(ZooConfig.preset("tiny"), base_steps=2, seed=7)
    calls = []
    real_save = zoo_module._save

    def failing_save(model, tokenizer, out):
        calls.append(out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_save(model, tokenizer, out)

    monkeypatch.setattr(zoo_module, "_save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(config, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def _quick(seed: int) -> ZooConfig:
    """The tiny preset cut to a few steps per checkpoint (a build in a second or two)."""
    tiny = ZooConfig.preset("tiny")
    recycling = tuple(dataclasses.replace(r, steps=min(r.steps, 2)) for r in tiny.recycling)
    return dataclasses.replace(tiny, base_steps=10, expert_steps=(2, 2, 2), recycling=recycling,
                               odd_steps=2, seed=seed)  # fmt: skip


def test_search_pool_builds_without_the_extras_until_asked(tmp_path, monkeypatch):
    from merge_env.pools.spec import zoo_pool

    config = _quick(11)
    monkeypatch.setattr(ZooConfig, "preset", classmethod(lambda cls, name: config))
    trained = []
    real = zoo_module.finetune
    monkeypatch.setattr(zoo_module, "finetune", lambda *a, **k: trained.append(1) or real(*a, **k))
    pool = zoo_pool("tiny", seed=11, cache_dir=str(tmp_path))
    core = load_zoo(tmp_path / f"zoo-{config.fingerprint()}")
    assert not core.has_extras and core.recycling == [] and core.odd_expert is None
    assert not (core.root / "extras").exists()
    assert set(core.checkpoints()) == {"base", *(f"expert:{t}" for t in config.tasks)}
    assert len(trained) == 1 + len(config.tasks)  # the base and the experts, nothing else
    # the base run's snapshot the stage80 checkpoint (a bare snapshot) is taken from
    assert core.base_run == {8: "base_run/step-8.safetensors"}
    assert list(pool.extra) == ["recycling", "odd_expert", "odd_expert_task"]
    assert len(trained) == 1 + len(config.tasks)  # listing the keys trains nothing
    recycling = pool.extra["recycling"]
    assert len(recycling) == len(config.recycling) and pool.extra["odd_expert"] is not None
    full = load_zoo(core.root)
    assert full.has_extras and full.recycling == recycling and full.extras_seconds > 0
    stage80 = load_file(full.root / "extras/recycling/stage80/model.safetensors")
    snapshot = load_file(full.root / "base_run/step-8.safetensors")
    assert stage80.keys() == snapshot.keys()
    assert all(torch.equal(stage80[k], snapshot[k]) for k in stage80)
    again = build_zoo(config, tmp_path, progress=False, extras=True)  # from the cache now
    assert (
        again == full
        and len(trained) == 1 + len(config.tasks) + sum(1 for r in config.recycling if r.steps) + 1
    )


def test_pool_tasks_replace_the_presets(tmp_path, monkeypatch):
    from merge_env.pools.spec import zoo_pool

    config = _quick(13)
    monkeypatch.setattr(ZooConfig, "preset", classmethod(lambda cls, name: config))
    pool = zoo_pool("tiny", seed=13, cache_dir=str(tmp_path), tasks=["add", "atbash", "cipher"])
    assert [t.name for t in pool.tasks] == ["add", "atbash", "cipher"]
    assert set(pool.sources) == {BASE, "add", "atbash", "cipher"}
    assert pool.name == "zoo-tiny-add-atbash-cipher"
    wanted = dataclasses.replace(config, tasks=("add", "atbash", "cipher"))
    (built,) = tmp_path.glob("zoo-*")  # one zoo, the one with atbash in reverse's place
    assert built.name == f"zoo-{wanted.fingerprint()}" != f"zoo-{config.fingerprint()}"
    zoo = load_zoo(built)
    assert zoo.config.tasks == ("add", "atbash", "cipher")
    assert [t.fingerprint for t in zoo.tasks] == [t.fingerprint for t in pool.tasks]
    assert all(ex.prompt.startswith("atb ") for ex in pool.tasks[1].test)
    with pytest.raises(ConfigError, match="a list of zoo task kinds"):
        zoo_pool("tiny", seed=13, cache_dir=str(tmp_path), tasks="atbash")
    with pytest.raises(ConfigError, match="must be distinct kinds"):
        zoo_pool("tiny", seed=13, cache_dir=str(tmp_path), tasks=["add", "mul", "cipher"])
    with pytest.raises(ConfigError, match="one entry per task"):
        zoo_pool(
            "tiny", seed=13, cache_dir=str(tmp_path), tasks=["add", "atbash", "reverse", "cipher"]
        )
    with pytest.raises(ConfigError, match="must keep 'cipher', the task of the preset's odd"):
        zoo_pool("tiny", seed=13, cache_dir=str(tmp_path), tasks=["add", "atbash", "reverse"])
    assert [p.name for p in tmp_path.glob("zoo-*")] == [built.name]  # the errors built nothing


def test_interrupted_extras_build_keeps_the_core(tmp_path, monkeypatch):
    config = _quick(12)
    core = build_zoo(config, tmp_path, progress=False)

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo_module, "_save", broken)
    with pytest.raises(KeyboardInterrupt):
        build_zoo(config, tmp_path, progress=False, extras=True)
    assert sorted(p.name for p in core.root.iterdir()) == [
        "base", "base_run", "experts", "tokenizer", "zoo.json"
    ]  # fmt: skip
    assert load_zoo(core.root) == core


def test_load_zoo_reads_a_zoo_built_whole_and_rejects_foreign_extras(tmp_path):
    config = _quick(13)
    zoo = build_zoo(config, tmp_path, progress=False, extras=True)
    # a zoo built before the split lists its recycling pool and odd expert in zoo.json itself
    manifest = json.loads((zoo.root / "zoo.json").read_text())
    extras = json.loads((zoo.root / "extras/extras.json").read_text())
    manifest["recycling"] = [f"extras/{p}" for p in extras["recycling"]]
    manifest["odd_expert"] = "extras/odd_expert"
    (zoo.root / "zoo.json").write_text(json.dumps(manifest))
    (zoo.root / "extras/extras.json").unlink()
    assert load_zoo(zoo.root) == zoo
    del manifest["recycling"], manifest["odd_expert"]
    (zoo.root / "zoo.json").write_text(json.dumps(manifest))
    (zoo.root / "extras/extras.json").write_text(json.dumps({**extras, "fingerprint": "0" * 16}))
    with pytest.raises(CheckpointError, match="extras.json.*fingerprint"):
        load_zoo(zoo.root)


def test_load_zoo_rejects_missing_or_broken_folders(tiny_zoo, tmp_path):
    with pytest.raises(CheckpointError, match="zoo.json"):
        load_zoo(tmp_path)
    (tmp_path / "zoo.json").write_text(json.dumps({"format": "mergegym-zoo"}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_zoo(tmp_path)
    manifest = json.loads((tiny_zoo.root / "zoo.json").read_text())
    (tmp_path / "zoo.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="config.json"):
        load_zoo(tmp_path)


def test_config_presets_and_validation():
    assert ZooConfig.preset("default").shape.layers >= 4
    with pytest.raises(ConfigError, match="huge"):
        ZooConfig.preset("huge")
    tiny = ZooConfig.preset("tiny")
    assert ZooConfig.from_dict(tiny.to_dict()) == tiny
    assert dataclasses.replace(tiny, seed=1).fingerprint() != tiny.fingerprint()
    assert tiny.fingerprint() == ZooConfig.preset("tiny").fingerprint()
    with pytest.raises(ConfigError, match="odd_task"):
        dataclasses.replace(
            tiny, odd_task="add", tasks=("reverse", "cipher"), base_mix=(1, 1), expert_steps=(1, 1)
        )
    with pytest.raises(ConfigError, match="base_mix"):
        dataclasses.replace(tiny, base_mix=(1.0,))
    with pytest.raises(ConfigError, match="unknown keys"):
        ZooConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="expert_replay"):
        dataclasses.replace(tiny, expert_replay=1.0)
    with pytest.raises(ConfigError, match="base_rare_mass"):
        dataclasses.replace(tiny, base_rare_mass=-0.1)


def test_per_task_settings_take_one_value_or_one_per_task():
    tiny = ZooConfig.preset("tiny")
    k = len(tiny.tasks)
    assert tiny.per_task("expert_lr") == (tiny.expert_lr,) * k
    own = dataclasses.replace(tiny, expert_lr=(1e-3, 2e-3, 3e-3), base_rare_mass=(0.1, 0.0, 0.2))
    assert own.per_task("expert_lr") == (1e-3, 2e-3, 3e-3)
    assert own.per_task("base_rare_mass") == (0.1, 0.0, 0.2)
    # JSON turns tuples into lists: the manifest's config must come back equal (same fingerprint)
    back = ZooConfig.from_dict(json.loads(json.dumps(own.to_dict())))
    assert back == own and back.fingerprint() == own.fingerprint() != tiny.fingerprint()
    with pytest.raises(ConfigError, match="expert_lr"):
        dataclasses.replace(tiny, expert_lr=(1e-3, 1e-3))
    with pytest.raises(ConfigError, match="expert_lr"):
        dataclasses.replace(tiny, expert_lr=(1e-3, 0.0, 1e-3))
    with pytest.raises(ConfigError, match="base_rare_mass"):
        dataclasses.replace(tiny, base_rare_mass=(0.1, 1.5, 0.1))


def test_rare_symbols_are_one_set_per_task_and_only_named_ones_change_the_zoo():
    from experiments.build_zoo import zoo_config

    tiny = ZooConfig.preset("tiny")
    own = zoo_config("tiny", 0, ["rare_symbols=['6789','nopqrstuvwxyz','NOPQRSTUVWXYZ']"])
    assert own.rare_symbols == ("6789", "nopqrstuvwxyz", "NOPQRSTUVWXYZ")
    shuffled = dataclasses.replace(own, rare_symbols=("9768", "zyxwvutsrqpon", "NOPQRSTUVWXYZ"))
    assert shuffled == own and shuffled.fingerprint() == own.fingerprint()  # sets, not strings
    back = ZooConfig.from_dict(json.loads(json.dumps(own.to_dict())))
    assert back == own and back.fingerprint() == own.fingerprint() != tiny.fingerprint()
    # the keys left out (None: the tasks' own symbols; loss_on "answer") leave every fingerprint
    # as it was, so zoos cached before the keys existed are found again
    digest = hashlib.sha256(
        json.dumps(
            [
                ZOO_VERSION,
                {k: v for k, v in tiny.to_dict().items() if k not in ("rare_symbols", "loss_on")},
                [make_task(k, tiny.n_search, tiny.n_test, tiny.task_seed).fingerprint
                 for k in tiny.tasks],
            ],
            sort_keys=True,
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    assert tiny.rare_symbols is None and tiny.fingerprint() == digest
    # pinned: a change here orphans every zoo users have cached (bump ZOO_VERSION on purpose)
    assert ZooConfig.preset("default").fingerprint() == "523950f1aa7e29aa"  # zoo v6
    # v5 (sessions 19-40) and v4 (sessions 10-18): the presets keep the keys their zoos were
    # cached under
    assert ZooConfig.preset("v5").fingerprint() == "c4d40895cf4e93df"
    assert ZooConfig.preset("v5") == dataclasses.replace(
        ZooConfig(), tasks=("add", "reverse", "cipher")
    )
    assert ZooConfig.preset("v4").fingerprint() == "40672da8300263b9"
    assert ZooConfig.preset("v4") == dataclasses.replace(
        ZooConfig.preset("v5"), expert_steps=(600, 600, 600), expert_replay=0.7
    )
    assert tiny.fingerprint() == "00efe72294bef792"
    with pytest.raises(ConfigError, match="only with zoo.base_rare_mass"):
        dataclasses.replace(tiny, base_rare_mass=None, rare_symbols=own.rare_symbols)
    for bad, words in (
        (("6789", "xyz"), "one string per task"),
        ("6789", "one string per task"),
        (("0123456789", "xyz", "XYZ"), "'add': rare symbols '0123456789'"),
        (("6789", "XYZ", "XYZ"), "'reverse': rare symbols 'XYZ'"),
        (("66", "xyz", "XYZ"), "must be a string of distinct"),
        ((["6", "7"], "xyz", "XYZ"), "must be a string"),
        (("0", "xyz", "XYZ"), "leading digits"),  # 1-9 would hold no rare digit
        (("123456789", "xyz", "XYZ"), "leading digits"),  # nor a common one
    ):
        with pytest.raises(ConfigError, match=words):
            dataclasses.replace(tiny, rare_symbols=bad)


def test_loss_on_text_labels_the_whole_sequence_and_is_another_zoo():
    from merge_env.pools.finetune import IGNORE, encode_rows
    from merge_env.scoring.tasks.synthetic import char_tokenizer

    tok = char_tokenizer()
    task = make_task("add", 4, 4, 0)
    answer = encode_rows(tok, task.test, 32)
    text = encode_rows(tok, task.test, 32, loss_on="text")
    assert torch.equal(answer.ids, text.ids) and torch.equal(answer.mask, text.mask)
    real = text.mask.bool()
    assert torch.equal(text.labels[real], text.ids[real]) and text.labels[~real].eq(IGNORE).all()
    for i, ex in enumerate(task.test):  # answer-only: the prompt's tokens carry no loss
        n_answer = len(tok(ex.answer, add_special_tokens=False).input_ids) + 1  # + EOS
        assert int(answer.labels[i].ne(IGNORE).sum()) == n_answer
    with pytest.raises(ConfigError, match="loss_on"):
        encode_rows(tok, task.test, 32, loss_on="prompt")
    with pytest.raises(ConfigError, match="zoo.loss_on"):
        dataclasses.replace(ZooConfig.preset("tiny"), loss_on="all")
    # "answer" is left out of the fingerprint (zoos cached before the key keep theirs: the
    # pinned digests above); "text" is another zoo, and survives the manifest round trip
    tiny = ZooConfig.preset("tiny")
    whole = dataclasses.replace(tiny, loss_on="text")
    assert whole.fingerprint() != tiny.fingerprint() == "00efe72294bef792"
    assert ZooConfig.from_dict(json.loads(json.dumps(whole.to_dict()))) == whole
    old = {k: v for k, v in tiny.to_dict().items() if k != "loss_on"}  # a pre-session-46 manifest
    assert ZooConfig.from_dict(old) == tiny
    assert tiny.to_manifest() == old and whole.to_manifest() == whole.to_dict()  # as before
    assert ZooConfig.from_dict(whole.to_manifest()) == whole
    # every model's training rows follow the setting
    from merge_env.pools.zoo import _Trainer

    for config, prompt_labelled in ((tiny, False), (whole, True)):
        rows = _Trainer(config, 1, False, "cpu").rows("data", [None] * len(config.tasks))[0]
        assert bool(rows.labels[:, 1].ne(IGNORE).any()) is prompt_labelled


def test_expert_mixture_replays_the_base_mixture():
    from merge_env.pools.zoo import _expert_mix

    config = ZooConfig.preset("default")
    assert config.expert_replay > 0 and config.base_rare_mass is not None
    mix = _expert_mix(config, "atbash")  # [pretraining pools..., domain pools...]
    k = len(config.tasks)
    assert sum(mix) == pytest.approx(1.0)
    replay = [config.expert_replay * w / sum(config.base_mix) for w in config.base_mix]
    assert mix[:k] == pytest.approx(replay)
    assert mix[k:] == pytest.approx((0.0, 1.0 - config.expert_replay, 0.0))


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGEGYM_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path
    monkeypatch.delenv("MERGEGYM_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mergegym"


def test_build_zoo_cli_prints_table_from_cache(tiny_zoo):
    from rich.console import Console

    from experiments.build_zoo import run

    out = io.StringIO()
    zoo = run(
        "tiny", cache_dir=tiny_zoo.root.parent, progress=False, console=Console(file=out, width=200)
    )
    text = out.getvalue()
    assert zoo == tiny_zoo
    assert "found in cache" in text
    for row in ["base", "expert:add", f"odd:{zoo.odd_expert_task}", "recycle:stage80"]:
        assert row in text
    # the machine that trained it, from the manifest: the same seed on another CPU is another zoo
    machine = build_machine()
    assert f"trained on {machine['cpu']} (torch {machine['torch']}," in " ".join(text.split())
    # and its weights' digest: the base and the experts, as weights_digest hashes them
    from experiments.build_zoo import core_digest

    digest = weights_digest(
        {"base": zoo.base, **{f"expert:{t}": p for t, p in zoo.experts.items()}}
    )
    assert core_digest(zoo) == digest and f"weights sha256 {digest}" in " ".join(text.split())


def test_built_on_is_loaded_with_the_zoo_and_empty_for_older_pools(tiny_zoo, tmp_path):
    assert tiny_zoo.built_on == build_machine()  # recorded by the build, read by load_zoo
    older = tmp_path / "older"
    shutil.copytree(tiny_zoo.root, older)
    manifest = json.loads((older / "zoo.json").read_text())
    del manifest["built_on"]  # a zoo built before the machine was recorded
    (older / "zoo.json").write_text(json.dumps(manifest))
    built_on = load_zoo(older).built_on
    assert built_on == {} and describe_machine(built_on) == ""
    cpu = {"cpu": "Some CPU", "torch": "2.13.0+cpu", "torch_cpu_capability": "AVX2"}
    assert describe_machine(cpu) == "Some CPU (torch 2.13.0+cpu, AVX2 kernels)"
    cpu["kernel_env"] = {"MKL_CBWR": "AVX2"}
    assert describe_machine(cpu) == "Some CPU (torch 2.13.0+cpu, AVX2 kernels, MKL_CBWR=AVX2)"
    cpu["transformers"] = "5.25.0"  # recorded since session 32
    assert describe_machine(cpu) == (
        "Some CPU (torch 2.13.0+cpu, transformers 5.25.0, AVX2 kernels, MKL_CBWR=AVX2)"
    )


def test_build_zoo_cli_core_only_builds_the_base_and_experts(tmp_path):
    from rich.console import Console

    from experiments.build_zoo import run

    out = io.StringIO()
    zoo = run(
        "tiny", seed=5, cache_dir=tmp_path, progress=False, regime=False, extras=False,
        console=Console(file=out, width=200),
    )  # fmt: skip
    text = out.getvalue()
    assert not zoo.has_extras and "base + experts" in text and "recycling pool" not in text
    # the tiny preset's 200 base + 500 expert steps, and the time per step the build took
    assert f"(700 training steps, {1000 * zoo.build_seconds / 700:.1f} ms each)" in text
    assert "expert:add" in text and "recycle:stage80" not in text
    # a later job that needs the extras builds them on the same core
    full = build_zoo(zoo.config, tmp_path, progress=False, extras=True)
    assert full.has_extras and full.root == zoo.root


def test_a_zoo_found_at_another_thread_count_is_named_and_its_extras_train_at_its_count(
    tiny_zoo, tmp_path, monkeypatch, caplog
):
    # the tiny zoo's core (trained at the tests' count, 1 unless a kept cache says otherwise),
    # without its extras, asked for at another count
    root = tmp_path / tiny_zoo.root.name
    shutil.copytree(tiny_zoo.root, root, ignore=shutil.ignore_patterns(zoo_module.EXTRAS))
    built = json.loads((root / "zoo.json").read_text())["train_threads"]
    other = built % 2 + 1
    monkeypatch.setenv("MERGEGYM_TRAIN_THREADS", str(other))
    with caplog.at_level("WARNING", logger="merge_env.pools.zoo"):
        zoo = build_zoo(tiny_zoo.config, tmp_path, progress=False, extras=True)
    assert zoo.root == root and zoo.train_threads == built
    assert f"{root} was trained with {built} torch thread(s), not the {other} asked" in caplog.text
    # the extras train at the core's count, so they are the ones the zoo built in one go holds
    assert zoo.extras_threads == built
    assert json.loads((root / "extras" / "extras.json").read_text())["train_threads"] == built
    extras = {k: v for k, v in zoo.checkpoints().items() if k.startswith(("recycle:", "odd:"))}
    assert extras and weights_digest(extras) == weights_digest(
        {k: v for k, v in tiny_zoo.checkpoints().items() if k in extras}
    )
    caplog.clear()
    monkeypatch.setenv("MERGEGYM_TRAIN_THREADS", str(built))
    with caplog.at_level("WARNING", logger="merge_env.pools.zoo"):
        build_zoo(tiny_zoo.config, tmp_path, progress=False, extras=True)
    assert "torch thread" not in caplog.text
    # extras kept from a build at another count than the core's are named when asked for
    manifest = root / "extras" / "extras.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "train_threads": other}))
    with caplog.at_level("WARNING", logger="merge_env.pools.zoo"):
        build_zoo(tiny_zoo.config, tmp_path, progress=False, extras=True)
    assert (
        f"odd expert trained with {other} torch thread(s), its base and experts with {built}"
        in (caplog.text)
    )


def test_build_zoo_settings_change_the_preset_or_name_the_bad_pair():
    from experiments.build_zoo import main, zoo_config

    tiny = ZooConfig.preset("tiny")
    config = zoo_config("tiny", 3, ["base_rare_mass=[0.03,0.01,0.002]", "base_steps=7"])
    assert config.base_rare_mass == (0.03, 0.01, 0.002) and config.base_steps == 7
    assert config.seed == 3 and config.expert_steps == tiny.expert_steps
    assert config.fingerprint() != dataclasses.replace(tiny, seed=3).fingerprint()
    assert zoo_config("tiny", 0) == tiny
    with pytest.raises(ConfigError, match="base_stepz"):
        zoo_config("tiny", 0, ["base_stepz=7"])
    with pytest.raises(ConfigError, match="not a Python literal"):
        zoo_config("tiny", 0, ["base_steps=seven"])
    # a text setting takes a bare word, or a quoted one
    assert zoo_config("tiny", 0, ["loss_on=text"]).loss_on == "text"
    assert zoo_config("tiny", 0, ["loss_on='text'"]).loss_on == "text"
    with pytest.raises(ConfigError, match="zoo.loss_on"):
        zoo_config("tiny", 0, ["loss_on=prompt"])
    with pytest.raises(ConfigError, match="base_rare_mass"):
        zoo_config("tiny", 0, ["base_rare_mass=2.0"])
    with pytest.raises(ConfigError, match="--core-only: for the zoo preset, not --pool smollm2"):
        main(["--pool", "smollm2", "--core-only"])
    with pytest.raises(ConfigError, match="only for --pool smollm2"):
        main(["--gguf", "SmolLM2.gguf"])


# ---------------------------------------------------------------- expert variants (regime study)


def _zoo_threads(zoo, monkeypatch) -> None:
    """Train at the thread count the zoo was built with (CPU results depend on it)."""
    built_with = json.loads((zoo.root / "zoo.json").read_text())["train_threads"]
    monkeypatch.setenv("MERGEGYM_TRAIN_THREADS", str(built_with))


def test_expert_variant_with_the_zoos_settings_reproduces_its_experts(
    tiny_zoo, tmp_path, monkeypatch
):
    from merge_env.pools.zoo import train_expert_variant

    _zoo_threads(tiny_zoo, monkeypatch)
    experts = train_expert_variant(tiny_zoo, tmp_path, progress=False)
    assert experts.keys() == tiny_zoo.experts.keys()
    for task, folder in experts.items():
        got = load_file(folder / "model.safetensors")
        want = load_file(tiny_zoo.experts[task] / "model.safetensors")
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"expert {task}: {key} differs"


def test_expert_variant_changes_only_what_it_is_told(tiny_zoo, tmp_path, monkeypatch):
    from merge_env.pools.finetune import LoraSpec
    from merge_env.pools.zoo import train_expert_variant

    _zoo_threads(tiny_zoo, monkeypatch)
    with pytest.raises(ConfigError, match="base_lr"):
        train_expert_variant(tiny_zoo, tmp_path / "bad", {"base_lr": 1e-3}, progress=False)
    with pytest.raises(ConfigError, match="expert_steps"):  # one count per task is due
        train_expert_variant(tiny_zoo, tmp_path / "bad", {"expert_steps": 300}, progress=False)
    assert not (tmp_path / "bad").exists()
    gentler = train_expert_variant(
        tiny_zoo, tmp_path / "lr", {"expert_lr": [1e-5] * 3}, progress=False
    )
    base = load_file(tiny_zoo.base / "model.safetensors")
    task = next(iter(tiny_zoo.experts))
    full = load_file(tiny_zoo.experts[task] / "model.safetensors")
    low = load_file(gentler[task] / "model.safetensors")
    drift = lambda sd: sum(float((sd[k] - base[k]).norm()) for k in base)  # noqa: E731
    assert 0 < drift(low) < drift(full)
    rank = 2
    lora = train_expert_variant(
        tiny_zoo, tmp_path / "lora", lora=LoraSpec(rank=rank, alpha=4.0), progress=False
    )
    adapted = load_file(lora[task] / "model.safetensors")
    for key, value in base.items():
        delta = adapted[key] - value
        if key.endswith(("proj.weight",)):
            # a LoRA merged into the weights: a rank-r update of each adapted matrix (up to
            # float32 rounding of W + update)
            sv = torch.linalg.svdvals(delta.double())
            assert sv[0] > 0 and sv[rank] < 1e-4 * sv[0], (key, sv[: rank + 1])
        else:  # embeddings, norms and the head are frozen
            assert torch.equal(adapted[key], value), key


def test_lora_adapters_merge_into_the_weights_they_trained():
    from transformers import LlamaConfig, LlamaForCausalLM

    from merge_env.pools.finetune import LoraSpec, lora_adapters

    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 32, (2, 5))
    with lora_adapters(model, LoraSpec(rank=2, alpha=2.0), seed=0) as adapters:
        assert len(adapters) == 2 * 7
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all("lora_" in n for n in trainable)
        with torch.no_grad():
            for a in adapters:
                a.lora_b.normal_()  # as if trained
            adapted = model(input_ids=ids).logits
    assert all(p.requires_grad for p in model.parameters())
    assert not any("lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="rank"):
        LoraSpec(rank=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="diverged"):
        with lora_adapters(model, LoraSpec(rank=2), seed=1) as adapters:
            with torch.no_grad():
                adapters[0].lora_b.fill_(1.0)
            raise RuntimeError("training diverged")
    after = model.state_dict()  # a failed training merges nothing and leaves the plain layers
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="no linear layer"):
        with lora_adapters(model, LoraSpec(targets=("nothing",)), seed=0):
            pass
    assert all(p.requires_grad for p in model.parameters())


def test_regime_variants_cli_prints_the_verdict_and_records_it(tiny_zoo, tmp_path, monkeypatch):
    from rich.console import Console

    from experiments.regime_variants import main, parse_settings, run

    _zoo_threads(tiny_zoo, monkeypatch)
    with pytest.raises(ConfigError, match="base_lr"):  # every --set is read, not the last only
        main(["--preset", "tiny", "--set", "base_lr=1", "--set", "expert_lr=1e-3"])
    settings = parse_settings(["expert_lr=2e-4", "expert_steps=[3,3,3]"])
    assert settings == {"expert_lr": 2e-4, "expert_steps": [3, 3, 3]}
    for bad in (["base_lr=1"], ["expert_lr"], ["expert_lr=fast"]):
        with pytest.raises(ConfigError, match="--set"):
            parse_settings(bad)
    out = io.StringIO()
    record = run("tiny", 0, settings, None, tmp_path, cache_dir=str(tiny_zoo.root.parent),
                 progress=False, console=Console(file=out, width=200))  # fmt: skip
    text = out.getvalue()
    assert "fine-tune regime" in text and "ties d0.5" in text and "regime " in text
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(record))
    assert record["gains"].keys() == tiny_zoo.experts.keys()
    assert record["holds"] in (True, False) and record["settings"] == settings


def test_continue_base_trains_the_base_on_its_own_mixture_only(tiny_zoo, tmp_path, monkeypatch):
    from merge_env.pools.zoo import continue_base

    _zoo_threads(tiny_zoo, monkeypatch)
    before = sorted(p.name for p in tiny_zoo.root.rglob("*"))
    base = load_file(tiny_zoo.base / "model.safetensors")
    first = continue_base(tiny_zoo, steps=3)
    again = {k: v.detach() for k, v in continue_base(tiny_zoo, steps=3).state_dict().items()}
    got = {k: v.detach() for k, v in first.state_dict().items()}
    assert not first.training
    assert got.keys() == base.keys()
    assert any(not torch.equal(got[k], base[k]) for k in base), "three steps moved nothing"
    assert all(torch.equal(got[k], again[k]) for k in got), "not deterministic on one machine"
    longer = continue_base(tiny_zoo, steps=4).state_dict()
    assert any(not torch.equal(longer[k], got[k]) for k in got)
    # the default length and rate are the first expert's; a zoo's files are never touched
    config = tiny_zoo.config
    default = continue_base(tiny_zoo).state_dict()
    explicit = continue_base(
        tiny_zoo, steps=config.expert_steps[0], lr=config.per_task("expert_lr")[0]
    ).state_dict()
    assert all(torch.equal(default[k], explicit[k]) for k in default)
    assert sorted(p.name for p in tiny_zoo.root.rglob("*")) == before
    for bad, match in (({"steps": 0}, "steps"), ({"steps": 2.5}, "steps"), ({"lr": 0.0}, "lr")):
        with pytest.raises(ConfigError, match=match):
            continue_base(tiny_zoo, **bad)
    bare = dataclasses.replace(tiny_zoo, config=None)
    with pytest.raises(ConfigError, match="no config"):
        continue_base(bare, steps=1)
