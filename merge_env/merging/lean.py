"""Linear merges without torch: numpy over memory-mapped safetensors, the merge CLI's fast path.

A linear merge (model soups, Wortsman et al. 2022) reads each input byte once for two flops
per entry: it is bound by memory and, being short, by start-up, where torch's import alone
costs more than the arithmetic. ``lean_merge`` covers the plain recipes — ``linear`` with
numeric weights, no base model, float32/float16 safetensors inputs of one layout, one output
shard — with the full engine's rules (``merging/folder.py``): each tensor is merged in
cache-sized chunks straight from read-only maps of the inputs on a few threads (numpy drops
the GIL), each chunk written at its planned offset and the maps' pages dropped once used, so
memory holds a few chunks. Anything else (or a non-finite result) returns None, and the
caller runs the full engine, which also words every error.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from merge_env.errors import MergeGymError
from merge_env.merging.arch import ArchInfo, arch_from_config
from merge_env.merging.folder import (
    SINGLE_NAME,
    header_bytes,
    merged_config,
    model_card,
    output_order,
    publish,
    read_header,
    temp_dir_for,
    weight_files,
)
from merge_env.merging.plan import RECIPE_FILE, ModelRef, ParamMerge

LINEAR_URL = "https://arxiv.org/abs/2203.05482"
CHUNK = 1 << 18  # entries merged at once: the chunk and its temporaries stay in cache
_NP = {"F32": np.float32, "F16": np.float16}
_OUT = {None: None, "float32": "F32", "torch.float32": "F32", "float16": "F16",
        "torch.float16": "F16"}  # fmt: skip
_DTYPE = {None: None, "float32": "F32", "torch.float32": "F32"}


class _Fallback(Exception):
    """The lean path does not cover this merge: the full engine runs it."""


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def lean_spec(data: Any) -> ParamMerge | None:
    """The recipe as a ParamMerge when the lean path covers it (see the module docstring)."""
    keys = {"merge_method", "models", "parameters", "dtype", "out_dtype", "seed", "exact_ties"}
    if not isinstance(data, Mapping) or not set(data) <= keys | {"base_model"}:
        return None
    top = data.get("parameters") or {}
    models = data.get("models")
    if (
        data.get("merge_method") != "linear" or data.get("base_model") is not None
        or not isinstance(top, Mapping) or not set(top) <= {"weight", "normalize"}
        or not _number(top.get("weight", 0)) or not isinstance(top.get("normalize", True), bool)
        or data.get("dtype") not in _DTYPE or data.get("out_dtype") not in _OUT
        or not isinstance(data.get("seed", 0), int) or isinstance(data.get("seed", 0), bool)
        or not isinstance(data.get("exact_ties", True), bool)
        or not isinstance(models, list) or not models
    ):  # fmt: skip
        return None
    refs = []
    for entry in models:
        entry = {"model": entry} if isinstance(entry, str) else entry
        if not isinstance(entry, Mapping) or not set(entry) <= {"model", "parameters"}:
            return None
        params = entry.get("parameters") or {}
        if not isinstance(entry.get("model"), str) or not isinstance(params, Mapping):
            return None
        if not set(params) <= {"weight"} or not _number(params.get("weight", top.get("weight"))):
            return None
        refs.append(ModelRef(entry["model"], dict(params)))
    if len({r.model for r in refs}) != len(refs):
        return None
    return ParamMerge(
        "linear", None, tuple(refs), dict(top), data.get("dtype"), data.get("out_dtype"),
        data.get("seed", 0), data.get("exact_ties", True),
    )  # fmt: skip


class _Input:
    """One input checkpoint: config, layout, and a read-only map of its one weights file."""

    def __init__(self, model: str) -> None:
        self.path = Path(model).expanduser()
        files = weight_files(self.path) if self.path.is_dir() else []
        if len(files) != 1:
            raise _Fallback
        self.config = json.loads((self.path / "config.json").read_text())
        self.start, self.entries = read_header(files[0])
        self.arch: ArchInfo = arch_from_config(self.config, self.entries)
        with open(files[0], "rb") as fh:
            self.map = mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ)

    def view(self, name: str, begin: int, count: int) -> np.ndarray:
        """Entries [begin, begin + count) of tensor ``name``, as a view of the map."""
        dtype, _, offset, _ = self.entries[name]
        item = np.dtype(_NP[dtype]).itemsize
        at = self.start + offset + begin * item
        return np.frombuffer(self.map, _NP[dtype], count, at)

    def drop(self, name: str) -> None:
        """Unmap the pages of tensor ``name`` (they stay in the page cache)."""
        _, _, begin, end = self.entries[name]
        lo = (self.start + begin) // mmap.PAGESIZE * mmap.PAGESIZE
        self.map.madvise(mmap.MADV_DONTNEED, lo, self.start + end - lo)


def _plan(spec: ParamMerge, inputs: list[_Input]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, output dtype, shape) of every tensor in streaming order; _Fallback when the
    inputs differ in layout or hold anything but float32/float16."""
    ref = inputs[0]
    for inp in inputs[1:]:
        same = {n: (e[0], e[1]) for n, e in inp.entries.items()}
        if inp.arch != ref.arch or same.keys() != ref.entries.keys():
            raise _Fallback
        if any(same[n][1] != e[1] for n, e in ref.entries.items()):
            raise _Fallback
    plan = []
    for name in output_order(ref.entries, ref.arch):
        dtypes = {inp.entries[name][0] for inp in inputs}
        if not dtypes <= set(_NP):
            raise _Fallback
        work = _DTYPE[spec.dtype] or ("F16" if dtypes == {"F16"} else "F32")
        plan.append((name, _OUT[spec.out_dtype] or work, ref.entries[name][1]))
    return plan


def _weights(spec: ParamMerge) -> tuple[np.ndarray, bool]:
    top = spec.parameters
    w = [m.parameters.get("weight", top.get("weight")) for m in spec.models]
    return np.array(w, dtype=np.float32), bool(top.get("normalize", True))


def _merge_chunk(inputs: list[_Input], name: str, begin: int, count: int, weights: np.ndarray,
                 divisor: np.float32 | None, promoted: str, out: str) -> np.ndarray:  # fmt: skip
    """Σ w_i θ_i over entries [begin, begin + count) of ``name``, in float32 (as torch's
    linear does), rounded through the inputs' dtype to the output's."""
    acc = inputs[0].view(name, begin, count) * weights[0]
    tmp = np.empty_like(acc)
    for inp, w in zip(inputs[1:], weights[1:]):
        np.multiply(inp.view(name, begin, count), w, out=tmp, dtype=np.float32)
        acc += tmp
    if divisor is not None:
        acc /= divisor
    if not np.isfinite(acc.sum()):
        raise _Fallback  # the full engine names the tensor and the inputs
    if promoted != "F32":
        acc = acc.astype(_NP[promoted])
    return acc if out == promoted else acc.astype(_NP[out])


def lean_merge(
    recipe: str | Path, out_dir: str | Path, *, shard_size: int = 5 * 2**30,
    overwrite: bool = False, workers: int | None = None,
) -> Path | None:  # fmt: skip
    """Run the recipe at ``recipe`` into ``out_dir`` when the lean path covers it (else None,
    with nothing written); the output equals the full engine's to float32 rounding."""
    try:
        spec = lean_spec(yaml.safe_load(Path(recipe).read_text()))
    except (OSError, yaml.YAMLError):
        return None
    out_dir = Path(out_dir)
    if spec is None or (out_dir.exists() and not overwrite):
        return None
    inputs_at = {Path(m.model).expanduser().resolve() for m in spec.models}
    target = out_dir.expanduser().resolve()
    if any(p == target or target in p.parents for p in inputs_at):
        return None  # the full engine refuses it with its own message
    tmp_dir, inputs = temp_dir_for(out_dir), []
    try:
        for m in spec.models:
            inputs.append(_Input(m.model))
        plan = _plan(spec, inputs)
        entries = [(n, d, s, int(np.prod(s, dtype=np.int64)) * np.dtype(_NP[d]).itemsize)
                   for n, d, s in plan]  # fmt: skip
        if sum(e[3] for e in entries) > shard_size:
            raise _Fallback
        meta = {"format": "pt", "merge_method": "linear", "producer": "mergegym"}
        head, offsets = header_bytes(entries, meta)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir()
        _write_weights(tmp_dir / SINGLE_NAME, head, offsets, entries, inputs, spec, workers)
        ref = inputs[0]
        embed = next((d for n, d, _ in plan if n == ref.arch.embed_names[0]), None)
        dtype_name = {"F32": "float32", "F16": "float16", None: None}[embed]
        config = merged_config(ref.config, ref.arch, dtype_name, False)
        (tmp_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        card = model_card("linear", LINEAR_URL, None, [m.model for m in spec.models],
                          RECIPE_FILE, spec.to_yaml(), out_dir.name)  # fmt: skip
        (tmp_dir / "README.md").write_text(card)
        (tmp_dir / RECIPE_FILE).write_text(spec.to_yaml())
        publish(tmp_dir, out_dir, [tmp_dir / SINGLE_NAME], ref.path)
    except (_Fallback, MergeGymError, OSError, ValueError, KeyError):
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    finally:
        for inp in inputs:
            inp.map.close()
    return out_dir


def _write_weights(file: Path, head: bytes, offsets: Mapping[str, int], entries: list,
                   inputs: list[_Input], spec: ParamMerge, workers: int | None) -> None:  # fmt: skip
    """Merge every tensor into ``file`` chunk by chunk on ``workers`` threads, then fsync it."""
    weights, normalize = _weights(spec)
    divisor = np.float32(weights.sum()) if normalize else None
    workers = workers or min(4, os.cpu_count() or 1)
    fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, len(head) + sum(e[3] for e in entries))
        os.pwrite(fd, head, 0)

        def merge(job: tuple[str, str, int, int]) -> None:
            name, out, begin, count = job
            dtypes = {inp.entries[name][0] for inp in inputs}
            promoted = "F32" if spec.dtype or dtypes != {"F16"} else "F16"
            chunk = _merge_chunk(inputs, name, begin, count, weights, divisor, promoted, out)
            os.pwrite(fd, chunk, offsets[name] + begin * chunk.itemsize)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lean") as pool:
            for name, out, shape, _ in entries:
                numel = int(np.prod(shape, dtype=np.int64))
                jobs = [(name, out, b, min(CHUNK, numel - b)) for b in range(0, numel, CHUNK)]
                for result in pool.map(merge, jobs):
                    del result
                for inp in inputs:
                    inp.drop(name)
        os.fsync(fd)
    finally:
        os.close(fd)
