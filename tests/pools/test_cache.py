"""Cached builds: the thread count they train with and the manifest that records it."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from merge_env.errors import ConfigError
from merge_env.pools.cache import (
    TRAIN_THREADS,
    TRAIN_THREADS_ENV,
    build_atomically,
    build_machine,
    pinned_threads,
    train_threads,
    weights_digest,
)


def test_builds_pin_the_train_threads_and_the_env_overrides_them(monkeypatch):
    monkeypatch.delenv(TRAIN_THREADS_ENV, raising=False)
    assert train_threads() == TRAIN_THREADS
    before = torch.get_num_threads()
    monkeypatch.setenv(TRAIN_THREADS_ENV, "1")
    with pinned_threads():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(TRAIN_THREADS_ENV, bad)
        with pytest.raises(ConfigError, match=TRAIN_THREADS_ENV):
            train_threads()


def test_manifest_records_the_thread_count_and_a_failed_build_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(TRAIN_THREADS_ENV, "1")
    root = tmp_path / "pool-abc"

    def build(tmp):
        (tmp / "w.txt").parent.mkdir(parents=True, exist_ok=True)
        (tmp / "w.txt").write_text("x")
        return {"format": "test"}

    info = build_atomically(root, "m.json", build, "build_seconds")
    saved = json.loads((root / "m.json").read_text())
    assert saved == info and saved["train_threads"] == 1 and saved["build_seconds"] >= 0
    # the machine too: the same seed trains another pool on another CPU family
    assert saved["built_on"] == build_machine()
    assert saved["built_on"]["cpu"] and saved["built_on"]["torch"] == torch.__version__
    assert saved["built_on"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert saved["built_on"]["transformers"] == transformers.__version__
    monkeypatch.setenv("MKL_CBWR", "AVX2")  # a setting that changes MKL's kernels is recorded
    assert build_machine()["kernel_env"]["MKL_CBWR"] == "AVX2"

    def broken(tmp):
        tmp.mkdir(parents=True)
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        build_atomically(tmp_path / "pool-def", "m.json", broken, "build_seconds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool-abc"]


def test_weights_digest_is_the_bytes_of_every_weight_file_by_name(tmp_path):
    from safetensors.torch import save_file

    from merge_env.errors import CheckpointError

    def folder(name, tensors):
        root = tmp_path / name
        root.mkdir()
        save_file(tensors, str(root / "model.safetensors"))
        return root

    w = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    base, copy = folder("base", w), folder("copy", {k: v.clone() for k, v in w.items()})
    expert = folder("expert", {"a": w["a"] + 1, "b": w["b"]})
    digest = weights_digest({"base": base, "expert:x": expert})
    assert len(digest) == 16 and int(digest, 16) >= 0
    # the same bytes under the same names: the same digest, in any order of the mapping
    assert weights_digest({"expert:x": expert, "base": copy}) == digest
    # one bit of one tensor, or the name a folder stands for, changes it
    flipped = w["a"].clone()
    flipped.view(torch.int32)[0, 1] ^= 1
    other = folder("flipped", {"a": flipped, "b": w["b"]})
    assert weights_digest({"base": other, "expert:x": expert}) != digest
    assert weights_digest({"base": expert, "expert:x": base}) != digest
    assert weights_digest({"base": base, "expert:y": expert}) != digest
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"{empty}.*'expert:x'"):
        weights_digest({"base": base, "expert:x": empty})
