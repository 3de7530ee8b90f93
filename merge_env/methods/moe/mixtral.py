"""MergeME, homogeneous case: K dense fine-tunes of one base -> a Mixtral checkpoint.

MergeME (Zhou et al. 2025, "MergeME: Model Merging Techniques for Homogeneous and Heterogeneous
MoEs", arXiv:2502.00997, §3.1) builds on Branch-Train-MiX (Sukhbaatar et al. 2024,
arXiv:2403.07816): every expert's MLP becomes one expert of every MoE layer, and the remaining
("shared") parameters -- embeddings, attention, norms, head -- are merged. BTX averages them;
MergeME merges their task vectors with TIES or DARE to cut interference. Any registered operator
of ``merge_env.merging.methods`` can stand in.

Output format: transformers 5.x holds Mixtral experts fused (``mlp.experts.gate_up_proj`` of shape
(K, 2I, D) and ``mlp.experts.down_proj`` (K, D, I)), but its conversion mapping loads the original
per-expert layout (``block_sparse_moe.experts.{e}.w1/w2/w3.weight`` and
``block_sparse_moe.gate.weight``) and ``save_pretrained`` writes that layout back. We write the
per-expert layout: it loads in transformers 4.x and 5.x and in other Mixtral readers alike.
w1 is the gate projection, w3 the up projection, w2 the down projection.

Routers are set from data without training (``merge_env.methods.moe.routers``); sequence-level routing
lives in ``merge_env.methods.moe.ppl`` and ``merge_env.methods.moe.hetero``.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, MixtralConfig, PreTrainedModel

from merge_env.errors import MergeError, RecipeError
from merge_env.merging.arch import ArchInfo
from merge_env.merging.checkpoint import Checkpoint, CheckpointWriter, TensorSpec
from merge_env.merging.engine import MergeEngine
from merge_env.merging.methods.registry import get_operator
from merge_env.merging.plan import ModelRef, ParamMerge
from merge_env.search.assemble import load_causal_lm

log = logging.getLogger(__name__)

# Dense MLP projection -> Mixtral's per-expert name (Mixtral's w1 is the gate, w3 the up).
MLP_TO_MIXTRAL = {"gate_proj": "w1", "up_proj": "w3", "down_proj": "w2"}
MOE_FAMILIES = ("llama", "mistral")
METADATA_FILE = "mergeme.json"


def shared_merge(
    base: str | Path,
    experts: Sequence[str | Path],
    method: str = "ties",
    parameters: Mapping[str, Any] | None = None,
    seed: int = 0,
) -> ParamMerge:
    """The merge of the experts' shared parameters: ``linear`` = BTX's average, else task vectors.

    ``parameters`` are the operator's top-level parameters (mergekit names); ``weight`` defaults
    to 1 for every expert. ``linear`` merges the experts alone (the base is not averaged in).
    """
    if not experts:
        raise MergeError("shared merge: no experts given")
    op = get_operator(method)
    params = {"weight": 1.0, **dict(parameters or {})}
    models = tuple(ModelRef(str(p)) for p in experts)
    spec = ParamMerge(method, str(base) if op.needs_base else None, models, params, seed=seed)
    try:  # validate the parameters against the operator's declaration before any tensor is read
        return ParamMerge.from_mergekit(spec.to_mergekit(), where=f"shared merge ({method})")
    except RecipeError as exc:
        raise MergeError(str(exc)) from None


def merged_dense_model(
    spec: ParamMerge, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """The parameter-level merge ``spec`` as an in-memory model (its reference's architecture)."""
    engine = MergeEngine(spec)
    try:
        model = load_causal_lm(engine.reference.path, dtype)
        state = model.state_dict()
        with torch.no_grad():
            for s in engine.output_specs():
                if s.name in state:
                    state[s.name].copy_(engine.merged_tensor(s.name))
    finally:
        engine.close()
    return model.to(device).eval().requires_grad_(False)


def mlp_tensor_names(arch: ArchInfo, layer: int) -> dict[str, str]:
    """The dense MLP weights of ``layer``: {gate_proj|up_proj|down_proj: tensor name}."""
    return {p: f"{arch.layers_prefix}{layer}.mlp.{p}.weight" for p in MLP_TO_MIXTRAL}


def _check_dense(ckpt: Checkpoint, where: str) -> None:
    """MergeError unless ``ckpt`` is a dense Llama-like model with gate/up/down MLPs."""
    if ckpt.arch.family.name not in MOE_FAMILIES:
        raise MergeError(
            f"{where} ({ckpt.path}): a {ckpt.arch.family.name} model cannot become Mixtral "
            f"experts; supported families: {', '.join(MOE_FAMILIES)}"
        )
    for layer in range(ckpt.arch.num_layers):
        for name in mlp_tensor_names(ckpt.arch, layer).values():
            if name not in ckpt:
                raise MergeError(f"{where} ({ckpt.path}): dense MLP tensor {name!r} not found")


def mixtral_config(
    base_dir: str | Path, num_experts: int, top_k: int, dtype: torch.dtype | None = None
) -> dict[str, Any]:
    """A Mixtral config dict carrying the dense base's shapes, rope and token ids."""
    if not 1 <= top_k <= num_experts:
        raise MergeError(f"top_k={top_k} must lie in [1, {num_experts}] (the number of experts)")
    src = AutoConfig.from_pretrained(base_dir)  # resolves defaults such as rope_parameters
    where = f"{base_dir}/config.json"
    for flag in ("attention_bias", "mlp_bias"):
        if getattr(src, flag, False):
            raise MergeError(f"{where}: {flag}=true has no Mixtral equivalent")
    if getattr(src, "pretraining_tp", 1) != 1:
        raise MergeError(f"{where}: pretraining_tp != 1 is not supported")
    keys = (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
        "max_position_embeddings", "initializer_range", "rms_norm_eps", "pad_token_id",
        "bos_token_id", "eos_token_id", "tie_word_embeddings", "attention_dropout",
        "rope_parameters", "sliding_window",
    )  # fmt: skip
    kwargs = {k: copy.deepcopy(getattr(src, k)) for k in keys if getattr(src, k, None) is not None}
    config = MixtralConfig(
        **kwargs, num_local_experts=num_experts, num_experts_per_tok=top_k,
        router_jitter_noise=0.0, output_router_logits=False,
    )  # fmt: skip
    config.architectures = ["MixtralForCausalLM"]
    out = config.to_dict()
    if dtype is not None:
        out["dtype"] = str(dtype).removeprefix("torch.")
    return out


def _check_shared_names(config: Mapping[str, Any], shared: Sequence[str], where: str) -> None:
    """MergeError naming any shared tensor that a Mixtral of ``config`` has no place for."""
    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(MixtralConfig.from_dict(dict(config)))
    expected = {n for n in shell.state_dict() if ".mlp." not in n}
    for name in shared:
        if name not in expected:
            raise MergeError(f"{where}: tensor {name!r} has no place in a Mixtral model")


def build_mixtral(
    base: str | Path,
    experts: Mapping[str, str | Path],
    out_dir: str | Path,
    router: torch.Tensor,
    *,
    shared: ParamMerge | None = None,
    top_k: int = 2,
    overwrite: bool = False,
    progress: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Mixtral checkpoint: expert MLPs side by side, shared parameters merged.

    ``router`` holds the gate rows, shape (layers, K, hidden), in the order of ``experts``;
    ``shared`` defaults to BTX's plain average. ``from_pretrained`` loads the result.
    """
    names = list(experts)
    paths = [Path(experts[n]) for n in names]
    spec = shared or shared_merge(base, paths, "linear")
    engine = MergeEngine(spec)
    try:
        ckpts = [Checkpoint(p) for p in paths]
        for name, ckpt in zip(names, ckpts):
            _check_dense(ckpt, f"expert {name!r}")
        arch = engine.arch
        _check_dense(engine.reference, "shared-merge reference")
        for name, ckpt in zip(names, ckpts):
            if ckpt.arch.num_layers != arch.num_layers:
                raise MergeError(
                    f"expert {name!r} ({ckpt.path}) has {ckpt.arch.num_layers} layers, the base "
                    f"{arch.num_layers}: homogeneous MoE needs equal depth (see moe_hetero)"
                )
        k, layers = len(names), arch.num_layers
        dense_mlp = {n for i in range(layers) for n in mlp_tensor_names(arch, i).values()}
        shared_specs = [s for s in engine.output_specs() if s.name not in dense_mlp]
        embed = next(s for s in shared_specs if s.name == arch.embed_names[0])
        hidden = embed.shape[1]
        if tuple(router.shape) != (layers, k, hidden):
            raise MergeError(
                f"router has shape {tuple(router.shape)}; expected (layers, experts, hidden) = "
                f"{(layers, k, hidden)}"
            )
        config = mixtral_config(engine.reference.path, k, top_k, embed.dtype)
        config["tie_word_embeddings"] = engine.output_config().get("tie_word_embeddings", False)
        _check_shared_names(config, [s.name for s in shared_specs], str(engine.reference.path))
        plan = list(shared_specs)
        sources: dict[str, tuple[int, str]] = {}  # output name -> (expert index, dense name)
        for layer in range(layers):
            moe = f"{arch.layers_prefix}{layer}.block_sparse_moe"
            plan.append(TensorSpec(f"{moe}.gate.weight", embed.dtype, (k, hidden)))
            for e, ckpt in enumerate(ckpts):
                for proj, dense in mlp_tensor_names(arch, layer).items():
                    info = ckpt.info(dense)
                    ref = engine.reference.info(dense)
                    if info.shape != ref.shape:
                        raise MergeError(
                            f"tensor {dense!r}: shape {info.shape} in {info.file} differs from "
                            f"{ref.shape} in {ref.file}"
                        )
                    out = f"{moe}.experts.{e}.{MLP_TO_MIXTRAL[proj]}.weight"
                    plan.append(TensorSpec(out, embed.dtype, info.shape))
                    sources[out] = (e, dense)
        meta = {
            "method": "MergeME (arXiv:2502.00997) / BTX (arXiv:2403.07816)",
            "experts": dict(zip(names, map(str, paths))),
            "shared_merge": spec.to_mergekit(),
            "top_k": top_k,
            **dict(metadata or {}),
        }
        writer = CheckpointWriter(
            out_dir, plan, config=config, side_files_from=engine.reference.path,
            overwrite=overwrite, metadata={"producer": "mergegym", "format": "pt"},
        )  # fmt: skip
        with writer:
            for s in tqdm(plan, desc="mixtral", disable=not progress):
                if s.name in sources:
                    e, dense = sources[s.name]
                    writer.write(s.name, ckpts[e].get(dense))
                elif s.name.endswith("block_sparse_moe.gate.weight"):
                    writer.write(s.name, router[arch.layer_of(s.name)])
                else:
                    writer.write(s.name, engine.merged_tensor(s.name))
            writer.add_file(METADATA_FILE, json.dumps(meta, indent=2) + "\n")
    finally:
        engine.close()
    log.info("wrote a %d-expert Mixtral (top-%d) to %s", k, top_k, out_dir)
    return Path(out_dir)
