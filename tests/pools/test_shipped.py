"""Tests for merge_env/pools/shipped.py and experiments/ship_zoo.py: the zoo shipped with MergeGym
installs instead of training, bit for bit, scores here as it scored where it was built, and a
corrupt copy is named and never lands in the cache."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from experiments.build_zoo import core_digest
from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools import shipped as shipped_module
from merge_env.pools import zoo as zoo_module
from merge_env.pools.cache import weights_digest
from merge_env.pools.shipped import SHIPPED_ROOT, install, read_index, shipped_entry, verify
from merge_env.pools.zoo import ZooConfig, build_zoo
from tests.pools.test_zoo import _quick


def _no_training(*args, **kwargs):
    raise AssertionError("trained where a shipped copy should have been installed")


# what ships: make run's zoo (v6, the default) and the zoo most figures in results/ stand on (v5)
SHIPPED_PRESETS = {"default": ("add", "atbash", "cipher"), "v5": ("add", "reverse", "cipher")}


@pytest.mark.parametrize("preset", sorted(SHIPPED_PRESETS))
def test_the_default_and_v5_zoos_seed_0_ship_whole(preset):
    entry = shipped_entry(ZooConfig.preset(preset).fingerprint())
    assert entry is not None, f"the {preset} preset's seed 0 ships no longer"
    assert entry["preset"] == preset and entry["seed"] == 0
    folder = SHIPPED_ROOT / entry["folder"]
    verify(folder, entry["files"])  # every file, its SHA-256, nothing extra
    manifest = json.loads((folder / entry["manifest"]).read_text())
    assert manifest["fingerprint"] == ZooConfig.preset(preset).fingerprint()
    assert "installed" not in manifest  # a build, not an installed copy
    tasks = SHIPPED_PRESETS[preset]
    assert set(entry["test_exact_match"]) == {"base", *(f"expert:{t}" for t in tasks)}
    assert manifest["built_on"] == entry["built_on"] and manifest["built_on"]["cpu"]
    # the README names the weights every machine now runs make run on: a re-ship updates it
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert f"`{entry['weights_digest']}`" in readme


@pytest.mark.parametrize("preset", sorted(SHIPPED_PRESETS))
def test_the_shipped_zoo_installs_without_training_and_scores_here_as_recorded(
    preset, tmp_path, monkeypatch
):
    """The cross-machine check: the shipped weights, scored on whatever machine runs the tests,
    give the TEST cells recorded where they were trained (teacher-forced argmax on every answer
    token; a machine where a near-tie flips would show here)."""
    from experiments.build_zoo import score_zoo

    config = ZooConfig.preset(preset)
    entry = shipped_entry(config.fingerprint())
    monkeypatch.setattr(zoo_module, "finetune", _no_training)
    zoo = build_zoo(config, tmp_path, progress=False)
    assert zoo.installed and zoo.installed["from"].endswith(entry["folder"])
    assert zoo.built_on == entry["built_on"]
    assert core_digest(zoo) == entry["weights_digest"]
    scores = score_zoo(zoo, "test")
    got = {
        name: {task: [round(s.exact_match * s.n), s.n] for task, s in row.items()}
        for name, row in scores.items()
    }
    assert got == entry["test_exact_match"]
    assert build_zoo(config, tmp_path, progress=False) == zoo  # from the cache now


@pytest.fixture
def shipped_quick(tmp_path, monkeypatch):
    """A quick tiny zoo built in ``tmp_path/built``, shipped by ship_zoo into
    ``tmp_path/shipped``, which then stands in for MergeGym's own shipped folder."""
    from experiments.ship_zoo import ship

    config = _quick(21)
    monkeypatch.setattr(ZooConfig, "preset", classmethod(lambda cls, name: config))
    built = build_zoo(config, tmp_path / "built", progress=False)
    root = tmp_path / "shipped"
    entry = ship("tiny", 21, tmp_path / "built", root=root)
    monkeypatch.setattr(shipped_module, "SHIPPED_ROOT", root)
    return config, built, entry, root


def test_a_shipped_zoo_installs_bit_for_bit_and_its_extras_train_as_the_originals(
    shipped_quick, tmp_path, monkeypatch
):
    config, built, entry, root = shipped_quick
    assert entry["weights_digest"] == core_digest(built)
    assert "extras" not in {f.split("/")[0] for f in entry["files"]}
    real = zoo_module.finetune
    monkeypatch.setattr(zoo_module, "finetune", _no_training)
    zoo = build_zoo(config, tmp_path / "cache", progress=False)
    assert zoo.installed and core_digest(zoo) == entry["weights_digest"]
    assert zoo.base_run == built.base_run and zoo.built_on == built.built_on
    assert json.loads((zoo.root / "zoo.json").read_text())["installed"]["from"] == str(
        root / entry["folder"]
    )
    assert read_index(root)[config.fingerprint()]["files"] == entry["files"]
    # the recycling pool and the odd expert train here from the shipped snapshots, as they
    # would from the zoo that was shipped
    monkeypatch.setattr(zoo_module, "finetune", real)
    mine = build_zoo(config, tmp_path / "cache", progress=False, extras=True)
    theirs = build_zoo(config, tmp_path / "built", progress=False, extras=True)
    extras = {k: v for k, v in mine.checkpoints().items() if k.startswith(("recycle:", "odd:"))}
    assert extras and weights_digest(extras) == weights_digest(
        {k: v for k, v in theirs.checkpoints().items() if k in extras}
    )


@pytest.mark.parametrize("damage", ["edit", "extra", "missing"])
def test_a_corrupt_shipped_copy_is_named_and_leaves_nothing_in_the_cache(
    shipped_quick, tmp_path, damage
):
    config, _, entry, root = shipped_quick
    folder = root / entry["folder"]
    weights = folder / "experts/add/model.safetensors"
    if damage == "edit":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 1
        weights.write_bytes(bytes(data))
        match = "experts/add/model.safetensors: SHA-256"
    elif damage == "extra":
        (folder / "experts/add/notes.txt").write_text("x")
        match = "experts/add/notes.txt: not a file of the shipped zoo"
    else:
        weights.unlink()
        match = "experts/add/model.safetensors: missing"
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match=match):
        build_zoo(config, cache, progress=False)
    assert list(cache.iterdir()) == []  # no zoo, no half-copied dot-folder
    with pytest.raises(CheckpointError, match="no shipped zoo"):
        install("0" * 16, cache / "zoo-x", root)


def test_shipped_false_trains_here_and_will_not_reuse_an_installed_copy(
    shipped_quick, tmp_path, monkeypatch
):
    from merge_env.pools.spec import zoo_pool

    config, built, entry, _ = shipped_quick
    build_zoo(config, tmp_path / "cache", progress=False)  # installs the shipped copy
    with pytest.raises(ConfigError, match="holds the zoo shipped with MergeGym"):
        build_zoo(config, tmp_path / "cache", progress=False, shipped=False)
    with pytest.raises(ConfigError, match="holds the zoo shipped with MergeGym"):
        zoo_pool("tiny", seed=21, cache_dir=str(tmp_path / "cache"), shipped=False)
    trained = []
    real = zoo_module.finetune
    monkeypatch.setattr(zoo_module, "finetune", lambda *a, **k: trained.append(1) or real(*a, **k))
    own = build_zoo(config, tmp_path / "own", progress=False, shipped=False)
    assert trained and not own.installed
    assert core_digest(own) == entry["weights_digest"]  # this machine, same seed


def test_ship_zoo_refuses_a_missing_zoo_and_an_installed_copy(shipped_quick, tmp_path):
    from experiments.ship_zoo import ship

    config, _, _, root = shipped_quick
    with pytest.raises(ConfigError, match="no zoo 'tiny' seed 21 in the cache"):
        ship("tiny", 21, tmp_path / "empty", root=tmp_path / "other")
    build_zoo(config, tmp_path / "cache", progress=False)
    with pytest.raises(ConfigError, match="installed from a shipped copy"):
        ship("tiny", 21, tmp_path / "cache", root=tmp_path / "other")
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())


def test_a_broken_index_is_named(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="index.json: unreadable shipped-zoo index"):
        read_index(tmp_path)
    assert read_index(tmp_path / "none") == {}


def test_build_zoo_cli_no_shipped_is_for_the_zoo_only():
    from experiments.build_zoo import main

    with pytest.raises(ConfigError, match="--no-shipped: for the zoo preset, not --pool smollm2"):
        main(["--pool", "smollm2", "--no-shipped"])


def test_install_keeps_a_copy_published_first_and_names_a_foreign_folder(shipped_quick, tmp_path):
    config, _, entry, root = shipped_quick
    first = build_zoo(config, tmp_path / "cache", progress=False)
    stamp = json.loads((first.root / "zoo.json").read_text())["installed"]
    # another process published the zoo while this one copied: its copy is kept
    assert install(config.fingerprint(), first.root, root) == entry
    assert json.loads((first.root / "zoo.json").read_text())["installed"] == stamp
    foreign = tmp_path / "other" / first.root.name
    (foreign / "junk").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="exists but holds no zoo.json; remove it"):
        install(config.fingerprint(), foreign, root)
    assert [p.name for p in foreign.parent.iterdir()] == [foreign.name]  # no dot-folder left


def test_an_index_entry_without_its_folder_or_keys_is_named(shipped_quick, tmp_path):
    config, _, entry, root = shipped_quick
    index = json.loads((root / "index.json").read_text())
    shutil.move(root / entry["folder"], tmp_path / "moved")
    with pytest.raises(CheckpointError, match=f"{entry['folder']}: listed in .*index.json but"):
        build_zoo(config, tmp_path / "cache", progress=False)
    del index["zoos"][config.fingerprint()]["files"]
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"index.json: unreadable .*no \['files'\]"):
        build_zoo(config, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_read_only_shipped_folder_installs_a_writable_copy(shipped_quick, tmp_path):
    config, _, entry, root = shipped_quick
    paths = [root, *root.rglob("*")]
    try:
        for p in paths:
            p.chmod(p.stat().st_mode & ~0o222)
        zoo = build_zoo(config, tmp_path / "cache", progress=False, extras=True)
    finally:
        for p in paths:
            p.chmod(p.stat().st_mode | 0o200)
    assert zoo.installed and zoo.has_extras  # the extras were written beside the copy
    # owner-writable, file by file (root writes read-only files too, so the modes are checked)
    assert all(p.stat().st_mode & 0o200 for p in [zoo.root, *zoo.root.rglob("*")])


def test_shipping_again_replaces_the_copy_and_keeps_the_index_whole(shipped_quick, tmp_path):
    from experiments.ship_zoo import ship

    config, built, entry, root = shipped_quick
    again = ship("tiny", 21, tmp_path / "built", root=root)
    assert again == entry and read_index(root) == {config.fingerprint(): entry}
    assert sorted(p.name for p in root.iterdir()) == ["index.json", entry["folder"]]
    verify(root / entry["folder"], entry["files"])


def test_a_zoo_trained_here_is_flagged_where_another_ships(shipped_quick, tmp_path, caplog):
    config, _, entry, root = shipped_quick
    own = build_zoo(config, tmp_path / "own", progress=False, shipped=False)
    with caplog.at_level("WARNING", logger="merge_env.pools.zoo"):
        assert build_zoo(config, tmp_path / "own", progress=False) == own
    assert not caplog.records  # this machine trains the shipped bits: nothing to say
    index = json.loads((root / "index.json").read_text())
    index["zoos"][config.fingerprint()]["weights_digest"] = "0" * 16
    (root / "index.json").write_text(json.dumps(index))
    with caplog.at_level("WARNING", logger="merge_env.pools.zoo"):
        build_zoo(config, tmp_path / "own", progress=False)
    assert "not the one shipped with MergeGym (weights 0000000000000000)" in caplog.text


def test_the_cli_and_figures_take_the_shipped_switch(shipped_quick, tmp_path, capsys):
    from omegaconf import OmegaConf

    from experiments import figures
    from experiments.build_zoo import main

    config, _, entry, _ = shipped_quick
    cache = str(tmp_path / "cache")
    args = ["--preset", "tiny", "--seed", "21", "--cache-dir", cache, "--no-progress",
            "--no-regime", "--core-only"]  # fmt: skip
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "the copy shipped with MergeGym, at" in out and entry["weights_digest"] in out
    with pytest.raises(ConfigError, match="holds the zoo shipped with MergeGym"):
        main([*args, "--no-shipped"])
    pool = OmegaConf.create({"_target_": figures.ZOO_POOL, "preset": "tiny", "cache_dir": cache,
                             "shipped": False})  # fmt: skip
    with pytest.raises(ConfigError, match="holds the zoo shipped with MergeGym"):
        figures._build_pool(pool, 21)
    zoo, record = figures._build_pool(OmegaConf.merge(pool, {"shipped": True}), 21)
    assert record["shipped"] is True and zoo.installed
