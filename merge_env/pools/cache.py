"""What every cached pool build shares: the cache folder, seeds per build phase, atomic publishing.

A pool (the zoo, SmolLM2's conversion and experts) is built once into a folder named by a hash
of its settings and found there again; a build runs in a dot-folder and is renamed into place
whole, so a killed build never leaves half a pool under its name.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch

from merge_env.errors import CheckpointError, ConfigError
from merge_env.scoring.tasks.task import Example, Task

logger = logging.getLogger(__name__)

# CPU results can depend on torch's thread count (reduction order): a default zoo trained with 1
# thread differs from one trained with 2 in every tensor and in its scores (SmolLM2 pool v5-L's
# seeds 0 and 1 on the Zen 4 did not: the same digests at 1 and 2); every build pins the count.
TRAIN_THREADS = 2
# Overrides TRAIN_THREADS, e.g. 1 to build pools side by side on a 2-core machine (2 threads
# each on 2 shared cores run many times slower); the count is written in the manifest.
TRAIN_THREADS_ENV = "MERGEGYM_TRAIN_THREADS"


def train_threads() -> int:
    """The torch thread count builds train with: ``$MERGEGYM_TRAIN_THREADS`` or TRAIN_THREADS."""
    raw = os.environ.get(TRAIN_THREADS_ENV, "").strip()
    if not raw:
        return TRAIN_THREADS
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"${TRAIN_THREADS_ENV}: a thread count >= 1, got {raw!r}")
    return int(raw)


def recorded_threads(manifest: dict[str, Any]) -> int | None:
    """The torch thread count a pool manifest records (None where it predates the count)."""
    count = manifest.get("train_threads")
    return int(count) if count else None


def warn_other_thread_count(root: Path, recorded: int | None, log: logging.Logger) -> None:
    """Warn when the pool found at ``root`` trained with another torch thread count than
    ``train_threads()``: cache keys hold a pool's settings, not the count, which changes every
    tensor it trains. ``recorded``: ``recorded_threads`` of its manifest."""
    asked = train_threads()
    if recorded is None or recorded == asked:
        return
    log.warning(
        "%s was trained with %d torch thread(s), not the %d asked for ($%s): a build at %d can "
        "give other weights; point the cache elsewhere (--cache-dir, $MERGEGYM_CACHE; for a zoo "
        "that ships with MergeGym also --no-shipped) to train one",
        root, recorded, asked, TRAIN_THREADS_ENV, asked,
    )  # fmt: skip


@contextmanager
def pinned_threads(count: int | None = None) -> Iterator[None]:
    """Train with ``count`` (default ``train_threads()``) torch threads inside the block; the
    caller's count after."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(train_threads() if count is None else count)
        yield
    finally:
        torch.set_num_threads(threads)


def cpu_model() -> str:
    """The CPU's model name with its family and model numbers (``/proc/cpuinfo``: a virtual
    machine may show only a generic name); else what ``platform`` knows."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if not key.strip() and fields:
                break  # the first processor's block is enough
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if fields.get("cpu family") and fields.get("model"):
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


# Environment variables that change which kernels torch, MKL and oneDNN run, and so the tensors
# a build trains (ATEN_CPU_CAPABILITY also shows in the capability torch reports).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA")


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def build_machine() -> dict[str, Any]:
    """What a pool's tensors depend on beyond its settings and seed: the CPU (another CPU family
    trains another pool from the same seed), the kernels torch dispatches on it (and any
    KERNEL_ENV setting that moves them), torch's version and transformers' (whose Llama code
    initialises and runs the model), so that two builds' records tell a machine difference from
    a package one."""
    return {
        "cpu": cpu_model(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": _package_version("transformers"),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if os.environ.get(k)},
    }


def recorded_machine(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The ``built_on`` record ``build_atomically`` wrote into ``manifest`` (``build_machine``'s);
    {} for a pool built before the machine was recorded."""
    built_on = manifest.get("built_on")
    return built_on if isinstance(built_on, dict) else {}


def describe_machine(built_on: dict[str, Any]) -> str:
    """``build_machine``'s record as one phrase, e.g. "<cpu> (torch 2.13.0+cpu, transformers
    5.25.0, AVX512 kernels)"; "" for an empty record (a pool built before the machine was
    recorded). Records from before transformers' version was kept leave it out."""
    if not built_on:
        return ""
    env = built_on.get("kernel_env") or {}
    pinned = "".join(f", {k}={v}" for k, v in env.items()) if isinstance(env, dict) else ""
    tf = f", transformers {built_on['transformers']}" if built_on.get("transformers") else ""
    return (
        f"{built_on.get('cpu', 'an unknown CPU')} (torch {built_on.get('torch', '?')}{tf}, "
        f"{built_on.get('torch_cpu_capability', '?')} kernels{pinned})"
    )


def weights_digest(checkpoints: Mapping[str, Path]) -> str:
    """A SHA-256 (16 hex digits) over every ``*.safetensors`` file of each checkpoint folder, by
    name: the same digest means the same weights, bit for bit.

    Two builds of one config and seed on different CPUs (or kernel paths) differ in every
    tensor, since training amplifies their last-bit rounding differences
    (``results/drift_study/``); comparing digests tells a user whether they hold the pool a
    figure was measured on. CheckpointError names a folder without weights.
    """
    h = hashlib.sha256()
    for name in sorted(checkpoints):
        files = sorted(Path(checkpoints[name]).glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{checkpoints[name]}: no *.safetensors file for {name!r}")
        for file in files:
            h.update(f"{name}/{file.name}:{file.stat().st_size}\n".encode())
            hash_file(h, file)
    return h.hexdigest()[:16]


def core_checkpoints(pool: Any) -> dict[str, Path]:
    """What a pool's tables and regime read, by display name: its ``base``, then its
    ``experts`` as ``expert:<task>`` (a zoo, the SmolLM2 pool, the domain pool)."""
    return {"base": pool.base, **{f"expert:{k}": v for k, v in pool.experts.items()}}


def core_digest(pool: Any) -> str:
    """``weights_digest`` of ``core_checkpoints(pool)``."""
    return weights_digest(core_checkpoints(pool))


def hash_file(h: Any, path: Path) -> None:
    """Feed the bytes of ``path`` to the hashlib object ``h``, in blocks."""
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)


def read_manifest(path: Path, fmt: str, what: str) -> dict[str, Any]:
    """The JSON manifest at ``path`` whose ``format`` is ``fmt``; CheckpointError naming the file
    (and ``what`` it should describe) when it is unreadable or of another format."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read the {what} manifest ({err})") from err
    if not isinstance(data, dict) or data.get("format") != fmt:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{path}: not a {what} manifest (format {found!r})")
    return data


def task_records(tasks: Sequence[Task]) -> list[dict[str, Any]]:
    """The tasks as a manifest stores them: name, metric, fingerprint, both splits."""
    return [
        {
            "name": t.name,
            "metric": t.metric,
            "fingerprint": t.fingerprint,
            "search": [[ex.prompt, ex.answer] for ex in t.search],
            "test": [[ex.prompt, ex.answer] for ex in t.test],
            **({} if t.eos else {"eos": False}),
        }
        for t in tasks
    ]


def tasks_from_records(records: Sequence[dict[str, Any]]) -> list[Task]:
    """The tasks ``task_records`` wrote (KeyError / TypeError on a malformed record)."""
    return [
        Task(
            r["name"],
            tuple(Example(p, a) for p, a in r["search"]),
            tuple(Example(p, a) for p, a in r["test"]),
            r["metric"],
            eos=bool(r.get("eos", True)),
        )
        for r in records
    ]


def default_cache_dir() -> Path:
    """Return $MERGEGYM_CACHE, else ~/.cache/mergegym."""
    env = os.environ.get("MERGEGYM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mergegym"


def sub_seed(seed: int, phase: str) -> int:
    """Return a seed for one phase of the build, stable across runs and Python versions."""
    return zlib.crc32(f"{seed}:{phase}".encode())


def require_checkpoints(folders: Iterable[Path], what: str) -> None:
    """CheckpointError naming the first of a pool's ``folders`` without a ``config.json``
    (``what``: the pool's kind, e.g. "zoo")."""
    for d in folders:
        if not (d / "config.json").is_file():
            raise CheckpointError(f"{d}: {what} checkpoint missing (no config.json)")


class _Pool(Protocol):
    train_threads: int | None


P = TypeVar("P", bound=_Pool)


def cached_pool(
    root: Path, manifest: str, build: Callable[[Path], dict[str, Any]],
    load: Callable[[Path], P], what: str, log: logging.Logger,
) -> P:  # fmt: skip
    """The pool at ``root``: loaded where its manifest is (with a warning if it trained at another
    thread count), else built by ``build_atomically`` (wall time as ``finetune_seconds``) and
    loaded. ``load(root)`` returns an object with ``train_threads``; ``what`` names it in logs."""
    if (root / manifest).is_file():
        log.info("%s found in cache: %s", what, root)
        pool = load(root)
        warn_other_thread_count(root, pool.train_threads, log)
        return pool
    info = build_atomically(root, manifest, build, "finetune_seconds")
    log.info("%s fine-tuned in %.1f s: %s", what, info["finetune_seconds"], root)
    return load(root)


def build_atomically(
    root: Path, manifest: str, build: Callable[[Path], dict[str, Any]], seconds_key: str
) -> dict[str, Any]:
    """Run ``build(tmp)`` in a dot-folder beside ``root``, then publish the folder as ``root``.

    The dict ``build`` returns, with its wall time under ``seconds_key``, the thread count and
    the machine (``build_machine``), is written to ``tmp/<manifest>`` before the rename; if
    another process published ``root`` first, its copy is kept. A failed or killed build leaves
    only a dot-folder, never a half build under ``root``. Shared by every cached build (the
    zoo, SmolLM2's conversion and its experts).
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
    try:
        start = time.perf_counter()
        info = build(tmp)
        info[seconds_key] = round(time.perf_counter() - start, 2)
        info.setdefault("train_threads", train_threads())
        info.setdefault("built_on", build_machine())
        (tmp / manifest).write_text(json.dumps(info, indent=1))
        try:
            os.rename(tmp, root)
        except OSError as err:
            if not (root / manifest).is_file():
                raise CheckpointError(f"{root}: exists but holds no {manifest}; remove it") from err
            logger.info("another process finished %s first; using its copy", root)
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
