"""A parameter-level merge as data (mergekit's ``models:`` schema) and a streaming merge engine.

``ParamMerge`` is a mergekit YAML in the ``models:`` form, validated before any tensor is read.
``MergeEngine`` opens the inputs' headers, checks them, and merges one output tensor at a time,
so a whole merge streams into ``CheckpointWriter`` with about one tensor per input in memory.

Behaviour follows mergekit 0.1.5 so that an existing YAML gives the same tensors:
* inputs are the ``models`` in order, then ``base_model`` when it is not among them; methods
  without a base (linear) merge the base as one more input, with the top-level parameters;
* a per-model parameter falls back to the top-level ``parameters``, then to its default; a
  ``{filter, value}`` list with no matching entry falls through the same way;
* gradients interpolate over t = layer / (num_layers - 1); embeddings, final norm and head use t=0;
* ``dtype`` casts the inputs before merging (task arithmetic family computes in it, linear and
  slerp in float32); ``out_dtype`` casts the result; the config's dtype is updated;
* ``lm_head.weight`` is written only when some input stores it (a tied input lends its embedding);
* non-float buffers are copied when every input agrees, else it is an error.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from merge_env.checkpoint import Checkpoint, CheckpointWriter, TensorInfo, TensorSpec
from merge_env.errors import CheckpointError, MergeError, RecipeError
from merge_env.ops import Operator, get_operator, merge_tensors, resolve_value, validate_params

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
}
_KEYS = (
    "merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "seed",
    "exact_ties",
)  # fmt: skip
_UNSUPPORTED = {
    "slices": "layer slices are inference paths here: use a Recipe (merge_env/recipe.py)",
    "modules": "multi-module merges are not supported",
    "tokenizer": "tokenizer surgery is not supported; the base model's tokenizer is copied",
    "tokenizer_source": "only 'base' is supported (the base model's tokenizer is copied)",
    "chat_template": "chat templates are copied from the base model, not set by the recipe",
}
RECIPE_FILE = "mergekit_config.yml"  # mergekit's name, so its tools recognise our outputs


def _plain(value: Any) -> Any:
    """Parameters as plain dicts/lists (YAML- and JSON-serialisable)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _dtype(name: Any, key: str, where: str) -> torch.dtype | None:
    """A mergekit dtype name (optionally ``torch.``-prefixed) as a torch dtype."""
    if name is None:
        return None
    key_name = str(name).removeprefix("torch.")
    if key_name not in DTYPES:
        raise RecipeError(f"{where}: {key}: unknown dtype {name!r}; known: {', '.join(DTYPES)}")
    return DTYPES[key_name]


@dataclass(frozen=True)
class ModelRef:
    """One input model: a checkpoint path (or a pool name) and its per-model parameters."""

    model: str
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ParamMerge:
    """A parameter-level merge in mergekit's ``models:`` schema (plus a seed for DARE)."""

    merge_method: str
    base_model: str | None
    models: tuple[ModelRef, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    dtype: str | None = None
    out_dtype: str | None = None
    seed: int = 0
    # False: equal magnitudes at a density cut are ranked by position, O(n), instead of by
    # mergekit's unstable full sort; the tensors then differ from mergekit's in those entries
    exact_ties: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))

    @classmethod
    def from_mergekit(cls, data: Mapping, where: str = "<recipe>") -> ParamMerge:
        """Parse and validate a mergekit config dict; RecipeError naming the key and ``where``."""
        if not isinstance(data, Mapping):
            raise RecipeError(f"{where}: a merge recipe is a mapping, got {type(data).__name__}")
        for key in data:
            if key in _UNSUPPORTED and not (
                key == "tokenizer_source" and data[key] in (None, "base")
            ):
                raise RecipeError(f"{where}: key {key!r} is not supported: {_UNSUPPORTED[key]}")
            if key not in _KEYS and key not in _UNSUPPORTED:
                raise RecipeError(f"{where}: unknown key {key!r}; known: {', '.join(_KEYS)}")
        method = data.get("merge_method")
        if not isinstance(method, str):
            raise RecipeError(f"{where}: merge_method: a method name is required, got {method!r}")
        try:
            op = get_operator(method)
        except MergeError as exc:
            raise RecipeError(f"{where}: merge_method: {exc}") from None
        base = data.get("base_model")
        if base is not None and not isinstance(base, str):
            raise RecipeError(f"{where}: base_model: expected a path or name, got {base!r}")
        raw_models = data.get("models")
        if not isinstance(raw_models, list) or not raw_models:
            raise RecipeError(f"{where}: models: a non-empty list of {{model, parameters}}")
        models = []
        for i, entry in enumerate(raw_models):
            at = f"{where}: models[{i}]"
            if isinstance(entry, str):
                entry = {"model": entry}
            if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
                raise RecipeError(f"{at}: expected a mapping with a 'model' path, got {entry!r}")
            extra = set(entry) - {"model", "parameters"}
            if extra:
                raise RecipeError(f"{at}: unknown key(s) {sorted(extra)}; known: model, parameters")
            params = entry.get("parameters") or {}
            if not isinstance(params, Mapping):
                raise RecipeError(f"{at}: parameters: expected a mapping, got {params!r}")
            models.append(ModelRef(entry["model"], _plain(params)))
        names = [m.model for m in models]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise RecipeError(f"{where}: models: {dup!r} is listed twice")
        params = data.get("parameters") or {}
        if not isinstance(params, Mapping):
            raise RecipeError(f"{where}: parameters: expected a mapping, got {params!r}")
        seed = data.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise RecipeError(f"{where}: seed: expected an integer, got {seed!r}")
        exact = data.get("exact_ties", True)
        if not isinstance(exact, bool):
            raise RecipeError(f"{where}: exact_ties: expected true or false, got {exact!r}")
        _dtype(data.get("dtype"), "dtype", where)
        _dtype(data.get("out_dtype"), "out_dtype", where)
        spec = cls(
            method, base, tuple(models), _plain(params), data.get("dtype"),
            data.get("out_dtype"), seed, exact,
        )  # fmt: skip
        spec._validate_params(op, where)
        return spec

    def _validate_params(self, op: Operator, where: str) -> None:
        """Check every model's and the top-level parameters against the operator's declaration."""
        if op.needs_base and self.base_model is None:
            raise RecipeError(f"{where}: base_model: {op.name} needs a base model")
        per_model = []
        for i, (ref, is_base) in enumerate(self.inputs()):
            if op.needs_base and is_base:
                continue  # mergekit ignores the base's per-model parameters
            at = f"{where}: models[{i}] ({ref.model!r})"
            if i >= len(self.models):
                at = f"{where}: base_model {ref.model!r} ({op.name} merges it as an input, as mergekit)"
            validate_params(op, self.parameters, [ref.parameters], at)
            per_model.append(ref.parameters)
        validate_params(op, self.parameters, per_model, where)

    def inputs(self) -> list[tuple[ModelRef, bool]]:
        """(model, is_base) in mergekit's order: the models, then the base when not among them."""
        out = [(m, m.model == self.base_model) for m in self.models]
        if self.base_model is not None and self.base_model not in {m.model for m in self.models}:
            out.append((ModelRef(self.base_model), True))
        return out

    def to_mergekit(self) -> dict[str, Any]:
        """The recipe as a mergekit config dict (``from_mergekit`` inverts it)."""
        out: dict[str, Any] = {"merge_method": self.merge_method}
        if self.base_model is not None:
            out["base_model"] = self.base_model
        models = []
        for m in self.models:
            entry: dict[str, Any] = {"model": m.model}
            if m.parameters:
                entry["parameters"] = _plain(m.parameters)
            models.append(entry)
        out["models"] = models
        if self.parameters:
            out["parameters"] = _plain(self.parameters)
        for key in ("dtype", "out_dtype"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.seed:
            out["seed"] = self.seed
        if not self.exact_ties:
            out["exact_ties"] = False
        return out

    def to_yaml(self) -> str:
        """The recipe as mergekit YAML text."""
        return yaml.safe_dump(self.to_mergekit(), sort_keys=False)

    @classmethod
    def load_yaml(cls, path: str | Path) -> ParamMerge:
        """Read a mergekit YAML file; RecipeError naming the file when it is unreadable or bad."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
        return cls.from_mergekit(data, where=str(path))


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
        self._dtype = _dtype(self.spec.dtype, "dtype", "merge recipe")
        self._out_dtype = _dtype(self.spec.out_dtype, "out_dtype", "merge recipe")
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
        embeds = self.arch.embed_names

        def order(name: str) -> tuple[int, int]:
            layer = self.arch.layer_of(name)
            if name in embeds:
                return (0, embeds.index(name))
            return (1, layer) if layer is not None else (2, 0)

        return sorted(names, key=order)

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
        config = copy.deepcopy(self.reference.config)
        embed = self._specs.get(self.arch.embed_names[0])
        if embed is not None and embed.dtype.is_floating_point:
            dtype_name = str(embed.dtype).removeprefix("torch.")
            keys = [k for k in ("dtype", "torch_dtype") if k in config] or ["torch_dtype"]
            for key in keys:
                config[key] = dtype_name
        if self.arch.tied and self.arch.head_name in self._specs:
            # some input has its own head: a tied config would make transformers drop the merge
            config["tie_word_embeddings"] = False
        return config

    def merged_tensor(self, name: str) -> torch.Tensor:
        """One output tensor, merged with its per-tensor parameters; inputs read once each."""
        spec = self._specs.get(name)
        if spec is None:
            raise MergeError(f"tensor {name!r} is not an output of this merge")
        tensors = [inp.ckpt.get(name) for inp in self.inputs]
        # safetensors hands out zero-copy views of its file maps, and a mapped page counts in
        # RSS while any map is open: dropping the handles ties each map's life to its tensor,
        # so memory holds one tensor per input, not every input file (2.9 -> 0.4 GB measured)
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
    lines = [
        "---", "library_name: transformers", "tags:", "- merge", "- mergegym", "---",
        f"# {out_name}", "",
        f"Merged with MergeGym using **{spec.merge_method}** ({engine.op.reference_url}).", "",
    ]  # fmt: skip
    if spec.base_model is not None:
        lines += [f"Base model: `{spec.base_model}`", ""]
    lines += ["Models merged:", *[f"- `{m.model}`" for m in spec.models], ""]
    lines += ["## Recipe", "", f"Reproduce with `python -m experiments.merge {RECIPE_FILE} OUT`"]
    lines += ["(mergekit-compatible):", "", "```yaml", spec.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)


@contextmanager
def _intra_op_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` for the block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _stream(engine: MergeEngine, writer: CheckpointWriter, workers: int, bar: tqdm) -> None:
    """Merge every output tensor on ``workers`` threads and write each as soon as it is done."""
    todo = iter(engine.output_specs())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="merge") as pool:
        running = {pool.submit(engine.merged_tensor, s.name): s for s in islice(todo, workers)}
        try:
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    spec = running.pop(future)
                    writer.write(spec.name, future.result())  # file I/O releases the GIL
                    bar.update(spec.nbytes)
                    nxt = next(todo, None)
                    if nxt is not None:
                        running[pool.submit(engine.merged_tensor, nxt.name)] = nxt
        finally:
            for future in running:
                future.cancel()


def run_merge(
    spec: ParamMerge,
    out_dir: str | Path,
    *,
    shard_size: int = 5 * 2**30,
    progress: bool = True,
    overwrite: bool = False,
    resolve: Callable[[str], Checkpoint] | None = None,
    workers: int | None = None,
) -> Path:
    """Stream the merge into a checkpoint folder at ``out_dir``; nothing is left there on error.

    ``workers`` tensors are merged at once (default: torch's thread count, at most 4), each
    with threads // workers intra-op threads: torch sorts and selects on one core, and coarse
    per-tensor parallelism does not spin on OpenMP barriers when the machine is busy. Each
    worker holds one tensor per input, so memory grows with ``workers``.
    """
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
            _stream(engine, writer, workers, bar)
            writer.add_file("README.md", model_card(engine.spec, engine, out_dir.name))
            writer.add_file(RECIPE_FILE, engine.spec.to_yaml())
    finally:
        bar.close()
        engine.close()
    log.info("merged %s into %s", spec.merge_method, out_dir)
    return out_dir
