"""Checkpoint reading (lazy, sharded, tied heads) and the atomic sharded writer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from merge_env.errors import CheckpointError
from merge_env.merging.checkpoint import Checkpoint, save_checkpoint


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_layout_per_family(tiny_factory, family):
    ckpt = Checkpoint(tiny_factory(family, layers=3))
    arch = ckpt.arch
    assert arch.family.name == family and arch.num_layers == 3
    layered = {arch.layer_of(n) for n in ckpt.names} - {None}
    assert layered == {0, 1, 2}
    parts = {arch.part_of(n) for n in ckpt.names}
    assert {"embed", "attn", "mlp", "norm", "final_norm"} <= parts
    for n in ckpt.names:
        if arch.layer_of(n) is not None:
            assert arch.part_of(n) in {"attn", "mlp", "norm"}, n
            assert arch.layer_of(arch.rename_layer(n, 7)) == 7


def test_tied_head_served_from_embedding(tiny_factory):
    ckpt = Checkpoint(tiny_factory("llama", tied=True))
    assert ckpt.arch.tied and "lm_head.weight" not in ckpt
    assert torch.equal(ckpt.get("lm_head.weight"), ckpt.get("model.embed_tokens.weight"))


def test_sharded_roundtrip_loads_in_transformers(tiny_factory, tmp_path):
    src = tiny_factory("llama")
    ckpt = Checkpoint(src)
    out = save_checkpoint(
        ckpt.state_dict(), tmp_path / "out", config=ckpt.config, side_files_from=src,
        shard_size=20_000,
    )  # fmt: skip
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    again = Checkpoint(out)
    for name in ckpt.names:
        assert torch.equal(again.get(name), ckpt.get(name)), name
    a = AutoModelForCausalLM.from_pretrained(src)
    b = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_truncated_file_names_the_file(tiny_factory):
    src = tiny_factory("llama")
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors.*truncated"):
        Checkpoint(src)


def test_garbage_file_and_unknown_arch(tiny_factory):
    src = tiny_factory("llama")
    (src / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Checkpoint(src)
    src2 = tiny_factory("llama")
    cfg = json.loads((src2 / "config.json").read_text())
    cfg["model_type"] = "mamba"
    (src2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="unknown architecture.*mamba"):
        Checkpoint(src2)


def test_failed_write_leaves_nothing(tiny_factory, tmp_path):
    ckpt = Checkpoint(tiny_factory("llama"))
    state = ckpt.state_dict()
    bad = dict(state)
    name = next(iter(bad))
    from merge_env.merging.checkpoint import CheckpointWriter, TensorSpec

    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in state.items()]
    with pytest.raises(CheckpointError, match="never written"):
        with CheckpointWriter(tmp_path / "out", specs, config=ckpt.config) as w:
            w.write(name, bad[name])
    assert list(tmp_path.iterdir()) == [p for p in tmp_path.iterdir() if p.name != "out"]
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_every_file_and_the_folder_are_synced_around_the_publishing_rename(
    tiny_factory, tmp_path, monkeypatch
):
    """A power cut after the rename must find config.json and side files whole: each is fsynced
    before the folder is published, and the parent folder after (its new entry)."""
    import os

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("needs /proc to name a file descriptor")
    src = tiny_factory("llama")
    (src / "tokenizer_config.json").write_text("{}")
    ckpt = Checkpoint(src)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a, b, **kw):
        events.append(("rename", str(a)))
        real_rename(a, b, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    out = save_checkpoint(
        ckpt.state_dict(), tmp_path / "out", config=ckpt.config, side_files_from=src,
        shard_size=20_000,
    )  # fmt: skip
    monkeypatch.undo()
    (publish,) = [i for i, (kind, _) in enumerate(events) if kind == "rename"]
    tmp_dir = os.path.realpath(events[publish][1])  # /proc names resolved paths
    before = {path for kind, path in events[:publish] if kind == "fsync"}
    files = sorted(p.name for p in out.iterdir())
    assert {"config.json", "tokenizer_config.json", "model.safetensors.index.json"} <= set(files)
    assert {f"{tmp_dir}/{name}" for name in files} <= before
    assert tmp_dir in before  # the folder's entries
    assert ("fsync", os.path.realpath(tmp_path)) in events[publish + 1 :]  # the rename
