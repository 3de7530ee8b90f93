"""Cached builds: the thread count they train with and the manifest that records it."""

from __future__ import annotations

import json

import pytest
import torch

from merge_env.errors import ConfigError
from merge_env.pools.cache import (
    TRAIN_THREADS,
    TRAIN_THREADS_ENV,
    build_atomically,
    build_machine,
    pinned_threads,
    train_threads,
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
    monkeypatch.setenv("MKL_CBWR", "AVX2")  # a setting that changes MKL's kernels is recorded
    assert build_machine()["kernel_env"]["MKL_CBWR"] == "AVX2"

    def broken(tmp):
        tmp.mkdir(parents=True)
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        build_atomically(tmp_path / "pool-def", "m.json", broken, "build_seconds")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pool-abc"]
