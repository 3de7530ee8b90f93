"""Hugging Face checkpoint directories: lazy tensor-by-tensor reading and an atomic sharded writer.

Reading parses each safetensors header once (names, dtypes, shapes, offsets) and checks it against
the file size, so a truncated or corrupt file is reported by name before any merge starts; tensors
are then read one at a time through safetensors' memory map.

Writing is planned: the writer is told every tensor's name, dtype and shape up front, lays out the
shards and their headers, and then accepts tensors one at a time in any order, writing each at its
offset. Peak memory is one tensor, not one shard. Everything goes to a hidden temporary folder
that is renamed to the output only when every tensor has been written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from merge_env.errors import CheckpointError
from merge_env.merging.arch import ArchInfo, arch_from_config
from merge_env.merging.folder import (
    INDEX_NAME,
    SINGLE_NAME,
    header_bytes,
    publish,
    read_header,
    temp_dir_for,
    weight_files,
)

log = logging.getLogger(__name__)

_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives and what it is, read from a safetensors header."""

    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        n = 1
        for d in self.shape:
            n *= d
        return n * torch.empty((), dtype=self.dtype).element_size()


def read_safetensors_header(file: Path) -> dict[str, TensorInfo]:
    """Tensor infos of one safetensors file; CheckpointError if it is corrupt or truncated."""
    _, entries = read_header(file)
    infos = {}
    for name, (dtype, shape, _, _) in entries.items():
        if dtype not in _ST_DTYPES:
            raise CheckpointError(f"{file}: bad header entry for tensor {name!r} ({dtype!r})")
        infos[name] = TensorInfo(name, file, _ST_DTYPES[dtype], shape)
    return infos


class Checkpoint:
    """A lazily opened HF causal-LM directory: config, layout, and tensors read one at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise CheckpointError(f"{self.path}: not a checkpoint directory (no config.json)")
        try:
            self.config: dict[str, Any] = json.loads(config_file.read_text())
        except ValueError as exc:
            raise CheckpointError(f"{config_file}: invalid JSON ({exc})") from exc
        self._infos = self._scan()
        self._bin_state: dict[str, torch.Tensor] | None = None
        self.arch: ArchInfo = arch_from_config(self.config, self._infos, where=str(config_file))
        self._handles: dict[Path, Any] = {}

    def _scan(self) -> dict[str, TensorInfo]:
        files = weight_files(self.path)
        if not files:
            if (self.path / "pytorch_model.bin").is_file():
                return self._scan_bin(self.path / "pytorch_model.bin")
            raise CheckpointError(f"{self.path}: no *.safetensors (or pytorch_model.bin) weights")
        infos: dict[str, TensorInfo] = {}
        for file in files:
            for name, info in read_safetensors_header(file).items():
                if name in infos:
                    raise CheckpointError(f"{self.path}: tensor {name!r} is in two files")
                infos[name] = info
        return infos

    def _scan_bin(self, file: Path) -> dict[str, TensorInfo]:
        # Legacy pickle weights: only ever with weights_only=True (no code execution on load).
        try:
            self._bin_state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad pickle
            raise CheckpointError(f"{file}: cannot load with weights_only=True ({exc})") from exc
        return {n: TensorInfo(n, file, t.dtype, tuple(t.shape)) for n, t in self._bin_state.items()}

    # -- queries -------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Tensor names in the files, in a stable order."""
        return list(self._infos)

    def __contains__(self, name: str) -> bool:
        return name in self._infos

    def info(self, name: str) -> TensorInfo:
        """Header facts of one tensor; CheckpointError naming the tensor when it is absent."""
        try:
            return self._infos[name]
        except KeyError:
            raise CheckpointError(f"{self.path}: tensor {name!r} not found") from None

    @property
    def nbytes(self) -> int:
        """Total bytes of tensor data."""
        return sum(i.nbytes for i in self._infos.values())

    def get(self, name: str) -> torch.Tensor:
        """Read one tensor (CPU). A tied head is served from the token embedding."""
        if name not in self._infos and name == self.arch.head_name and self.arch.tied:
            name = self.arch.embed_names[0]
        info = self.info(name)
        if self._bin_state is not None:
            return self._bin_state[name]
        handle = self._handles.get(info.file)
        if handle is None:
            try:
                handle = safe_open(str(info.file), framework="pt", device="cpu")
            except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
                raise CheckpointError(f"{info.file}: cannot open ({exc})") from exc
            self._handles[info.file] = handle
        try:
            return handle.get_tensor(name)
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{info.file}: cannot read tensor {name!r} ({exc})") from exc

    def tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) one at a time."""
        for name in self.names if names is None else names:
            yield name, self.get(name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor at once (small models only: reads the whole checkpoint)."""
        return dict(self.tensors())

    def close(self) -> None:
        """Drop open file handles."""
        self._handles.clear()

    def __repr__(self) -> str:
        return (
            f"Checkpoint({str(self.path)!r}, {self.arch.family.name}, {len(self._infos)} tensors)"
        )


# -- writing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    """What the writer must reserve for one tensor."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Size in bytes."""
        return TensorInfo(self.name, Path(), self.dtype, self.shape).nbytes


def _plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


class CheckpointWriter:
    """Writes a planned set of tensors as sharded safetensors into a folder renamed when complete.

    Use as a context manager: on an exception nothing is left at ``out_dir``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        specs: Iterable[TensorSpec],
        *,
        config: Mapping[str, Any],
        side_files_from: str | Path | None = None,
        shard_size: int = 5 * 2**30,
        overwrite: bool = False,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        if self.out_dir.exists() and not overwrite:
            raise CheckpointError(f"{self.out_dir}: output exists (pass overwrite=True to replace)")
        self.specs = list(specs)
        if len({s.name for s in self.specs}) != len(self.specs):
            raise CheckpointError(f"{self.out_dir}: a tensor name is planned twice")
        self.overwrite = overwrite
        self.config = dict(config)
        self.side_files_from = Path(side_files_from) if side_files_from else None
        self.shard_size = shard_size
        self.metadata = {"format": "pt", **(metadata or {})}
        self.tmp_dir = temp_dir_for(self.out_dir)
        self._slots: dict[str, tuple[Path, int, TensorSpec]] = {}
        self._written: set[str] = set()
        self._files: dict[Path, Any] = {}

    def __enter__(self) -> CheckpointWriter:
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir()
        shards = _plan_shards(self.specs, self.shard_size)
        n = len(shards)
        weight_map: dict[str, str] = {}
        for i, shard in enumerate(shards):
            fname = SINGLE_NAME if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            self._layout_shard(self.tmp_dir / fname, shard)
            weight_map.update({s.name: fname for s in shard})
        if n > 1:
            total = sum(s.nbytes for s in self.specs)
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (self.tmp_dir / INDEX_NAME).write_text(json.dumps(index, indent=2))
        return self

    def _layout_shard(self, file: Path, shard: list[TensorSpec]) -> None:
        entries = [(t.name, _ST_NAMES[t.dtype], t.shape, t.nbytes) for t in shard]
        head, offsets = header_bytes(entries, self.metadata)
        fh = open(file, "w+b")  # noqa: SIM115 - closed in finish()/abort()
        fh.write(head)
        fh.truncate(len(head) + sum(t.nbytes for t in shard))
        self._files[file] = fh
        for spec in shard:
            self._slots[spec.name] = (file, offsets[spec.name], spec)

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor (any order); its dtype and shape must match the plan."""
        try:
            file, offset, spec = self._slots[name]
        except KeyError:
            raise CheckpointError(f"{self.out_dir}: tensor {name!r} was not planned") from None
        if tuple(tensor.shape) != spec.shape:
            raise CheckpointError(
                f"tensor {name!r}: shape {tuple(tensor.shape)} differs from planned {spec.shape}"
            )
        if tensor.dtype != spec.dtype:
            tensor = tensor.to(spec.dtype)
        fh = self._files[file]
        fh.seek(offset)
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
        fh.write(memoryview(data))
        self._written.add(name)

    def _finish(self) -> None:
        missing = [s.name for s in self.specs if s.name not in self._written]
        if missing:
            raise CheckpointError(
                f"{self.out_dir}: {len(missing)} planned tensors never written (first: {missing[0]!r})"
            )
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
        synced = set(self._files)
        self._files.clear()
        (self.tmp_dir / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        publish(self.tmp_dir, self.out_dir, synced, self.side_files_from)

    def _abort(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def add_file(self, name: str, text: str) -> None:
        """Write an extra text file (a README, a recipe) into the output."""
        (self.tmp_dir / name).write_text(text)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._abort()
            return
        try:
            self._finish()
        except BaseException:
            self._abort()
            raise


def save_checkpoint(
    state: Mapping[str, torch.Tensor],
    out_dir: str | Path,
    *,
    config: Mapping[str, Any],
    side_files_from: str | Path | None = None,
    shard_size: int = 5 * 2**30,
    overwrite: bool = False,
) -> Path:
    """Write a whole state dict as a checkpoint folder (atomically); returns the folder."""
    specs = [TensorSpec(n, t.dtype, tuple(t.shape)) for n, t in state.items()]
    with CheckpointWriter(
        out_dir,
        specs,
        config=config,
        side_files_from=side_files_from,
        shard_size=shard_size,
        overwrite=overwrite,
    ) as writer:
        for name, tensor in state.items():
            writer.write(name, tensor)
    return Path(out_dir)
