"""The streaming merge engine: runs a ParamMerge tensor by tensor into a checkpoint folder.

``MergeEngine`` opens the inputs' headers, checks them, and merges one output tensor at a time,
so a whole merge streams into ``CheckpointWriter`` with about one tensor per input in memory.

Behaviour follows mergekit 0.1.5 (see ``merging/plan.py`` for the schema's rules), and:
* gradients interpolate over t = layer / (num_layers - 1); embeddings, final norm and head use t=0;
* ``dtype`` casts the inputs before merging (task arithmetic family computes in it, linear and
  slerp in float32); ``out_dtype`` casts the result; the config's dtype is updated;
* ``lm_head.weight`` is written only when some input stores it (a tied input lends its embedding);
* non-float buffers are copied when every input agrees, else it is an error.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from merge_env.errors import CheckpointError, ConfigError, MergeError, RecipeError
from merge_env.merging.checkpoint import Checkpoint, CheckpointWriter, TensorInfo, TensorSpec
from merge_env.merging.folder import merged_config, output_order
from merge_env.merging.folder import model_card as folder_card
from merge_env.merging.methods.params import resolve_value
from merge_env.merging.methods.registry import get_operator, merge_tensors
from merge_env.merging.plan import RECIPE_FILE, ModelRef, ParamMerge, dtype_of
from merge_env.merging.prefetch import Prefetcher

log = logging.getLogger(__name__)

PAGE = 4096  # bytes: read_inputs touches one per page


def open_checkpoint(name: str) -> Checkpoint:
    """The default resolver: a model reference is a local checkpoint directory."""
    path = Path(name).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"model {name!r}: no checkpoint directory at {path.absolute()} (models are local "
            "HF folders here; the hub is offline)"
        )
    return Checkpoint(path)


def _tensor_seed(seed: int, name: str) -> int:
    """A seed for one tensor that depends only on (seed, name), not on merge order or process."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _matches(value: Any, name: str, part: str) -> bool:
    """False only for a filter list none of whose entries applies (mergekit then falls through)."""
    entries = [value] if isinstance(value, Mapping) else value
    if not isinstance(entries, list | tuple) or not all(isinstance(e, Mapping) for e in entries):
        return True
    return any(e.get("filter") in (None, "*", part) or str(e["filter"]) in name for e in entries)


@dataclass(frozen=True)
class _Input:
    ref: ModelRef
    ckpt: Checkpoint
    is_base: bool


class MergeEngine:
    """Merges a ParamMerge tensor by tensor; inputs are checked from their headers on creation."""

    def __init__(
        self, spec: ParamMerge, resolve: Callable[[str], Checkpoint] | None = None
    ) -> None:
        self.spec = ParamMerge.from_mergekit(spec.to_mergekit(), where="merge recipe")
        self.op = get_operator(self.spec.merge_method)
        resolve = resolve or open_checkpoint
        self.inputs = [_Input(ref, resolve(ref.model), b) for ref, b in self.spec.inputs()]
        # mergekit's donor of config and tokenizer: the base, else the first model
        self.reference = next((i for i in self.inputs if i.is_base), self.inputs[0]).ckpt
        self.arch = self.reference.arch
        # which inputs the operator merges, and which one is its base (none for linear)
        self._merged = [
            k for k, i in enumerate(self.inputs) if not (self.op.needs_base and i.is_base)
        ]
        base_idx = next((k for k, i in enumerate(self.inputs) if i.is_base), None)
        self._base = base_idx if self.op.needs_base else None
        self._dtype = dtype_of(self.spec.dtype, "dtype", "merge recipe")
        self._out_dtype = dtype_of(self.spec.out_dtype, "out_dtype", "merge recipe")
        self._specs = {s.name: s for s in self._plan()}
        self._params = {name: self._resolve_params(name) for name in self._specs}

    # -- planning, from headers only ---------------------------------------------------------
    @staticmethod
    def _info(ckpt: Checkpoint, name: str) -> TensorInfo | None:
        if name in ckpt:
            return ckpt.info(name)
        embed = ckpt.arch.embed_names[0]
        if name == ckpt.arch.head_name and ckpt.arch.tied and embed in ckpt:
            return ckpt.info(embed)
        return None

    def _output_names(self) -> list[str]:
        names = list(self.reference.names)
        head = self.arch.head_name
        # mergekit writes an optional head when some input stores one; tied ones lend the embedding
        if head not in names and any(head in i.ckpt for i in self.inputs):
            names.append(head)
        return output_order(names, self.arch)

    def _plan(self) -> list[TensorSpec]:
        ref = self.reference
        for inp in self.inputs:
            a = inp.ckpt.arch
            if a.family != self.arch.family or a.num_layers != self.arch.num_layers:
                raise MergeError(
                    f"{inp.ckpt.path}: {a.family.name} with {a.num_layers} layers cannot merge "
                    f"with {ref.path} ({self.arch.family.name}, {self.arch.num_layers} layers)"
                )
        specs = []
        for name in self._output_names():
            infos = []
            for inp in self.inputs:
                info = self._info(inp.ckpt, name)
                if info is None:
                    raise MergeError(
                        f"tensor {name!r} is missing from {inp.ckpt.path} (model {inp.ref.model!r})"
                    )
                infos.append(info)
            first = infos[0]
            for info in infos[1:]:
                if info.shape != first.shape:
                    raise MergeError(
                        f"tensor {name!r}: shape {info.shape} in {info.file} differs from "
                        f"{first.shape} in {first.file}"
                    )
            if all(i.dtype.is_floating_point for i in infos):
                work = self._dtype or self._promoted([i.dtype for i in infos])
                dtype = self._out_dtype or work
            else:
                dtype = first.dtype
            specs.append(TensorSpec(name, dtype, first.shape))
        return specs

    @staticmethod
    def _promoted(dtypes: list[torch.dtype]) -> torch.dtype:
        out = dtypes[0]
        for d in dtypes[1:]:
            out = torch.promote_types(out, d)
        return out

    def _setting(self, key: str, scopes: list[Mapping], name: str) -> float | None:
        """The first scope whose setting for ``key`` applies to tensor ``name`` (mergekit order)."""
        layer, part = self.arch.layer_of(name), self.arch.part_of(name)
        for scope in scopes:
            if key in scope and _matches(scope[key], name, part):
                return resolve_value(scope[key], name, layer, self.arch.num_layers, part)
        return None

    def _resolve_params(self, name: str) -> tuple[dict[str, float], list[dict[str, float]]]:
        top = self.spec.parameters
        glob: dict[str, float] = {}
        models: list[dict[str, float]] = [{} for _ in self._merged]
        for p in self.op.params:
            if not p.per_model:
                value = self._setting(p.name, [top], name)
                glob[p.name] = p.default if value is None else value
                continue
            for params, k in zip(models, self._merged):
                inp = self.inputs[k]
                value = self._setting(p.name, [inp.ref.parameters, top], name)
                if value is None and p.required:
                    raise RecipeError(
                        f"merge recipe: tensor {name!r}: model {inp.ref.model!r} has no "
                        f"{p.name!r} for it (no filter entry matches and no top-level value)"
                    )
                params[p.name] = p.default if value is None else value
        return glob, models

    # -- queries -----------------------------------------------------------------------------
    def output_specs(self) -> list[TensorSpec]:
        """Name, dtype and shape of every output tensor, in streaming order."""
        return list(self._specs.values())

    def output_config(self) -> dict[str, Any]:
        """The donor's config with the output dtype (and head tying) brought up to date."""
        embed = self._specs.get(self.arch.embed_names[0])
        dtype = embed.dtype if embed is not None and embed.dtype.is_floating_point else None
        name = None if dtype is None else str(dtype).removeprefix("torch.")
        return merged_config(
            self.reference.config, self.arch, name, self.arch.head_name in self._specs
        )

    def input_bytes(self, name: str) -> int:
        """Bytes of every input of output tensor ``name`` (what merging it reads)."""
        return sum(self._info(inp.ckpt, name).nbytes for inp in self.inputs)  # type: ignore[union-attr]

    def read_inputs(self, name: str) -> list[torch.Tensor]:
        """The inputs of output tensor ``name``, their pages read in (merging/prefetch.py).

        The tensors are zero-copy views of the files' maps (no copy is as cheap as none); one
        byte per page is touched, so the page faults, and on a cold page cache the disk reads,
        happen here, on the reader's thread, not in the merge.
        """
        tensors = [inp.ckpt.get(name) for inp in self.inputs]
        self.close()  # see merged_tensor: each map then lives as long as its tensor
        for t in tensors:
            if t.numel():
                t.reshape(-1).view(torch.uint8)[::PAGE].max()  # a strided gather, GIL released
        return tensors

    def merged_tensor(self, name: str, inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """One output tensor, merged with its per-tensor parameters; inputs read once each
        (``inputs``: already read, as ``read_inputs`` returns them)."""
        spec = self._specs.get(name)
        if spec is None:
            raise MergeError(f"tensor {name!r} is not an output of this merge")
        if inputs is not None:
            tensors = list(inputs)
        else:
            tensors = [inp.ckpt.get(name) for inp in self.inputs]
            # safetensors hands out zero-copy views of its file maps, and a mapped page counts
            # in RSS while any map is open: dropping the handles ties each map's life to its
            # tensor, so memory holds one tensor per input, not every input file
            self.close()
        if not spec.dtype.is_floating_point:
            return self._buffer(name, tensors)
        if self._dtype is not None:
            tensors = [t.to(self._dtype) for t in tensors]
        base = tensors[self._base] if self._base is not None else None
        others = [tensors[k] for k in self._merged]
        glob, models = self._params[name]
        gen = None
        if self.op.stochastic:
            gen = torch.Generator().manual_seed(_tensor_seed(self.spec.seed, name))
        try:
            out = merge_tensors(
                self.op.name, others, base, models, glob, generator=gen, name=name,
                compute_dtype=None, exact_ties=self.spec.exact_ties,
            )  # fmt: skip
        except MergeError as exc:
            bad = [str(i.ckpt.info(name).file) for i, t in zip(self.inputs, tensors)
                   if name in i.ckpt and not torch.isfinite(t).all()]  # fmt: skip
            raise MergeError(
                f"{exc}{'; non-finite input in ' + ', '.join(bad) if bad else ''}"
            ) from None
        return out.to(spec.dtype)

    def _buffer(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
        first = tensors[0]
        for inp, t in zip(self.inputs[1:], tensors[1:]):
            if t.dtype != first.dtype or not torch.equal(t, first):
                raise MergeError(
                    f"tensor {name!r}: non-float buffer differs in {inp.ckpt.path}; "
                    "it cannot be merged, only copied when every input agrees"
                )
        return first.clone()  # not a view of the input's file map

    def layer_tensors(self, layer: int) -> dict[str, torch.Tensor]:
        """Every merged tensor of decoder layer ``layer``."""
        if not 0 <= layer < self.arch.num_layers:
            raise MergeError(f"layer {layer} out of range (the model has {self.arch.num_layers})")
        return {n: self.merged_tensor(n) for n in self._specs if self.arch.layer_of(n) == layer}

    def close(self) -> None:
        """Drop the inputs' open file handles."""
        for inp in self.inputs:
            inp.ckpt.close()


def model_card(spec: ParamMerge, engine: MergeEngine, out_name: str) -> str:
    """A README naming the method, its paper, the inputs and the recipe."""
    return folder_card(
        spec.merge_method, engine.op.reference_url, spec.base_model,
        [m.model for m in spec.models], RECIPE_FILE, spec.to_yaml(), out_name,
    )  # fmt: skip


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stream(
    engine: MergeEngine, writer: CheckpointWriter, workers: int, bar: tqdm, read_ahead: int
) -> None:
    """Merge every output tensor on ``workers`` threads and write each as soon as it is done,
    while a reader thread fetches the next tensors' inputs (at most ``read_ahead`` bytes held)."""
    jobs = [(s.name, engine.input_bytes(s.name)) for s in engine.output_specs()]
    running: dict[Future, str] = {}

    def finish(done: set[Future]) -> None:
        for future in done:
            name = running.pop(future)
            tensor = future.result()
            writer.write(name, tensor)  # file I/O releases the GIL
            bar.update(tensor.nbytes)

    with (
        Prefetcher(jobs, engine.read_inputs, read_ahead) as reads,
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge") as pool,
    ):
        try:
            for name, nbytes, inputs in reads:
                if len(running) >= workers:
                    finish(wait(running, return_when=FIRST_COMPLETED)[0])
                future = pool.submit(engine.merged_tensor, name, inputs)
                del inputs  # held by the worker alone, so freed when its merge returns
                # released as the merge ends, not when this thread gets to it: the reader may
                # be what this thread waits for next
                future.add_done_callback(lambda _, n=nbytes: reads.release(n))
                running[future] = name
            while running:
                finish(wait(running, return_when=FIRST_COMPLETED)[0])
        finally:
            for future in running:
                future.cancel()


def check_out_is_not_an_input(spec: ParamMerge, out: str | Path) -> None:
    """ConfigError if ``out`` is one of the recipe's input folders or holds one: writing
    there (``--overwrite`` replaces the folder) would delete an input."""
    target = Path(out).expanduser().resolve()
    inputs = [spec.base_model, *(m.model for m in spec.models)]
    for name in dict.fromkeys(i for i in inputs if i):
        source = Path(name).expanduser().resolve()
        if source == target or target in source.parents:
            raise ConfigError(
                f"{out}: is the input model {name!r} or holds it; write the merge elsewhere"
            )


def run_merge(
    spec: ParamMerge,
    out_dir: str | Path,
    *,
    shard_size: int = 5 * 2**30,
    progress: bool = True,
    overwrite: bool = False,
    resolve: Callable[[str], Checkpoint] | None = None,
    workers: int | None = None,
    read_ahead: int = 256 * 2**20,
) -> Path:
    """Stream the merge into a checkpoint folder at ``out_dir``; nothing is left there on error.

    ``workers`` tensors are merged at once (default: torch's thread count, at most 4), each
    with threads // workers intra-op threads: torch sorts and selects on one core, and coarse
    per-tensor parallelism does not spin on OpenMP barriers when the machine is busy. A reader
    thread reads the next tensors' inputs meanwhile (merging/prefetch.py); at most
    ``read_ahead`` bytes of inputs are held at once (or one tensor's, where that is more).
    """
    check_out_is_not_an_input(spec, out_dir)
    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    workers = max(1, min(threads, 4) if workers is None else workers)
    engine = MergeEngine(spec, resolve)
    specs = engine.output_specs()
    writer = CheckpointWriter(
        out_dir, specs, config=engine.output_config(), side_files_from=engine.reference.path,
        shard_size=shard_size, overwrite=overwrite,
        metadata={"merge_method": spec.merge_method, "producer": "mergegym"},
    )  # fmt: skip
    bar = tqdm(
        total=sum(s.nbytes for s in specs), unit="B", unit_scale=True, desc="merge",
        disable=not progress,
    )  # fmt: skip
    try:
        with writer, _intra_op_threads(max(1, threads // workers)):
            _stream(engine, writer, workers, bar, read_ahead)
            writer.add_file("README.md", model_card(engine.spec, engine, out_dir.name))
            writer.add_file(RECIPE_FILE, engine.spec.to_yaml())
    finally:
        bar.close()
        engine.close()
    log.info("merged %s into %s", spec.merge_method, out_dir)
    return out_dir
