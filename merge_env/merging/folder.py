"""What a checkpoint folder holds on disk, without torch: safetensors headers, the merged
tensors' order and config, the model card, and the atomic publishing of a written folder.

Kept free of torch so that the lean linear merge (``merging/lean.py``) reads, plans and writes
a checkpoint with the same rules as the full engine without paying torch's import.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import struct
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from merge_env.errors import CheckpointError
from merge_env.merging.arch import ArchInfo

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files copied beside the weights so the output loads with from_pretrained and its tokenizer.
SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
# bytes per element of each safetensors dtype
ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U8": 1, "BOOL": 1}  # fmt: skip
# A header entry: dtype name, shape, and the data's [begin, end) offsets in the data section.
Entry = tuple[str, tuple[int, ...], int, int]


def read_header(file: Path) -> tuple[int, dict[str, Entry]]:
    """(data section's file offset, name -> entry) of a safetensors file; CheckpointError if
    it is corrupt or truncated (every tensor is checked to lie inside the file)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) < 8:
                raise CheckpointError(f"{file}: not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > size - 8:
                raise CheckpointError(
                    f"{file}: truncated or corrupt safetensors file (header claims {header_len} "
                    f"bytes, file has {size})"
                )
            header = json.loads(fh.read(header_len))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{file}: unreadable safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"{file}: safetensors header is not a JSON object")
    data_len = size - 8 - header_len
    entries: dict[str, Entry] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            item = ITEM_SIZE[meta["dtype"]]
            shape = tuple(int(d) for d in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{file}: bad header entry for tensor {name!r} ({exc})") from exc
        numel = 1
        for d in shape:
            numel *= d
        if end > data_len or end - begin != numel * item:
            raise CheckpointError(
                f"{file}: tensor {name!r} lies outside the file or has the wrong size "
                f"(bytes {begin}..{end}, data section {data_len}); the file is truncated or corrupt"
            )
        entries[name] = (meta["dtype"], shape, begin, end)
    return 8 + header_len, entries


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (its index's shards, else every one)."""
    index = path / INDEX_NAME
    if not index.is_file():
        return sorted(path.glob("*.safetensors"))
    try:
        weight_map: Mapping[str, str] = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{index}: invalid index ({exc})") from exc
    files = sorted({path / f for f in weight_map.values()})
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
    return files


def header_bytes(entries: Iterable[tuple[str, str, Sequence[int], int]],
                 metadata: Mapping[str, str]) -> tuple[bytes, dict[str, int]]:  # fmt: skip
    """A safetensors file's first bytes (length and header, padded to 8) for tensors given as
    (name, dtype name, shape, nbytes) in file order, and each tensor's offset in the file."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset, begins = 0, {}
    for name, dtype, shape, nbytes in entries:
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        begins[name] = offset
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors aligns the data section to 8 bytes
    start = 8 + len(raw)
    return struct.pack("<Q", len(raw)) + raw, {n: start + b for n, b in begins.items()}


def output_order(names: Iterable[str], arch: ArchInfo) -> list[str]:
    """Tensor names in streaming order: embeddings, then layer by layer, then the rest."""
    embeds = arch.embed_names

    def order(name: str) -> tuple[int, int]:
        layer = arch.layer_of(name)
        if name in embeds:
            return (0, embeds.index(name))
        return (1, layer) if layer is not None else (2, 0)

    return sorted(names, key=order)


def merged_config(
    config: Mapping[str, Any], arch: ArchInfo, dtype_name: str | None, head_written: bool
) -> dict[str, Any]:
    """The donor's config with the output dtype (a float dtype's name, e.g. 'float32') and
    head tying brought up to date."""
    out = copy.deepcopy(dict(config))
    if dtype_name is not None:
        for key in [k for k in ("dtype", "torch_dtype") if k in out] or ["torch_dtype"]:
            out[key] = dtype_name
    if arch.tied and head_written:
        # some input has its own head: a tied config would make transformers drop the merge
        out["tie_word_embeddings"] = False
    return out


def model_card(method: str, url: str, base: str | None, models: Iterable[str], recipe_file: str,
               recipe_yaml: str, out_name: str) -> str:  # fmt: skip
    """A README naming the method, its paper, the inputs and the recipe."""
    lines = [
        "---", "library_name: transformers", "tags:", "- merge", "- mergegym", "---",
        f"# {out_name}", "", f"Merged with MergeGym using **{method}** ({url}).", "",
    ]  # fmt: skip
    if base is not None:
        lines += [f"Base model: `{base}`", ""]
    lines += ["Models merged:", *[f"- `{m}`" for m in models], ""]
    lines += ["## Recipe", "", f"Reproduce with `python -m experiments.merge {recipe_file} OUT`"]
    lines += ["(mergekit-compatible):", "", "```yaml", recipe_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def publish(tmp_dir: Path, out_dir: Path, synced: Iterable[Path],
            side_files_from: Path | None) -> None:  # fmt: skip
    """Copy the side files into ``tmp_dir``, make every file in it durable, then rename it to
    ``out_dir`` (replacing an old folder there); ``synced``: files already fsynced."""
    if side_files_from is not None:
        for fname in SIDE_FILES:
            src = side_files_from / fname
            if src.is_file():
                shutil.copy2(src, tmp_dir / fname)
    # Every file's data, then the folder's entries, must be on disk before the rename
    # publishes the folder: otherwise a power cut can leave a published checkpoint whose
    # config.json or tokenizer is empty.
    done = set(synced)
    for file in sorted(tmp_dir.iterdir()):
        if file not in done:
            fsync_path(file)
    fsync_path(tmp_dir)
    if out_dir.exists():  # overwrite: swap in, then drop the old folder
        trash = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
        out_dir.rename(trash)
        tmp_dir.rename(out_dir)
        fsync_path(out_dir.parent)  # the rename itself survives a power cut
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp_dir.rename(out_dir)
        fsync_path(out_dir.parent)


def temp_dir_for(out_dir: Path) -> Path:
    """A fresh hidden sibling of ``out_dir`` to write into before publishing."""
    return out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"


def fsync_path(path: Path) -> None:
    """Flush a file's data, or a folder's entries, to disk (a read-only descriptor suffices)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
