"""How far two builds of the default zoo's base drift apart when only the arithmetic differs.

    python results/drift_study/drift.py run MODE OUT.pt [--steps N] [--threads 1] [--seed 0] [--lr R]
        [--expert TASK --zoo ZOO]
    python results/drift_study/drift.py compare A.pt B.pt
    python results/drift_study/drift.py score ZOO A.pt [B.pt ...]
    python results/drift_study/drift.py pools POOL_A POOL_B [--origin MODEL]
    python results/drift_study/drift.py stages OUT.json [--threads 2] [--steps 20]
    python results/drift_study/drift.py stages-compare A.json B.json

``run`` trains the default zoo's base (``ZooConfig(seed=S)``: its data, initialisation, batches,
schedule and AdamW) for ``--steps`` steps, and saves the parameters after steps 1, 3, 10, 30,
100, 300, 900 and 1000 (as float64) to ``OUT.pt``. ``--lr`` changes the peak learning rate only.
With ``--expert TASK --zoo ZOO`` it trains that task's expert instead, as the build does, from
the base file of the built zoo ``ZOO``, so two runs start from the same weights. MODE is the
arithmetic:

- ``fp32``: the build's own (``_Trainer.fit``'s ``finetune`` with the model's own loss). At the
  build's 2 threads and full step count it gives the built zoo's ``base/`` (or expert) bit for
  bit on the machine that built it;
- ``fp64``: the model cast to float64, transformers' Llama code unchanged. That code still rounds
  to float32 inside every RMSNorm, every attention softmax and the loss;
- ``fp64-full``: float64 end to end: the RMSNorms swapped for a float64 one, an eager attention
  whose softmax keeps the input dtype (registered through transformers' ``AttentionInterface``),
  the cross-entropy taken in float64.

Run the same MODE twice, once with the default kernels and once with another kernel path (e.g.
``ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2``), which stands in for another
machine; ``compare`` prints, per saved step, the relative L2 distance of the two parameter sets,
the largest absolute difference and how many tensors are still equal. ``run`` also prints the
final weights' SHA-256: the same command on two machines gives the same digest only if their
arithmetic agrees bit for bit (``fp32 OUT --threads 2 --steps 100`` under a pinned kernel path
is a 10-second check of whether two machines would build the same zoo). ``score`` scores each
run's last snapshot on the zoo's TEST split (exact match) beside the zoo's own base and experts.
``pools`` compares two built pools of one config (e.g. built under two kernel paths), checkpoint
by checkpoint.

``stages`` (session 32) localises where two machines' arithmetic first parts. It trains the base
as ``run fp32`` does and writes, in the order they are computed, a SHA-256 of: every initial
tensor, the first batch, every module's output in the first forward, the first loss, every
gradient as the first backward accumulates it, every tensor after the first step, then each
later step's loss and the weights after ``--steps`` steps. ``stages-compare`` names the first
entries that differ between two such files (from two machines, or two kernel settings of one):
the first differing module output is the first op whose rounding differs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers.models.llama.modeling_llama import repeat_kv

from merge_env.pools.cache import build_machine, sub_seed
from merge_env.pools.finetune import IGNORE, finetune, lm_loss, mixture_batches, warmup_cosine
from merge_env.pools.zoo import ZooConfig, _expert_mix, _Trainer

SNAPSHOTS = (1, 3, 10, 30, 100, 300, 900, 1000)
MODES = ("fp32", "fp64", "fp64-full")


class _RMSNorm64(torch.nn.Module):
    """Llama's RMSNorm without its round trip through float32."""

    def __init__(self, norm: torch.nn.Module) -> None:
        super().__init__()
        self.weight = norm.weight
        self.eps = norm.variance_epsilon

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps))


def _eager_native(module, query, key, value, attention_mask, scaling, dropout=0.0, **_):
    """Eager attention with the softmax in the inputs' dtype (transformers' takes it in float32)."""
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = torch.softmax(weights, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _full_loss(model, ids, mask, labels):
    """The causal-LM loss with the cross-entropy in the logits' own dtype."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE
    )


def _to_full_fp64(model: torch.nn.Module) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register("eager_native", _eager_native)
    # without a mask function of its own, transformers passes an unknown attention no mask
    AttentionMaskInterface.register("eager_native", eager_mask)
    model.set_attn_implementation("eager_native")
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "LlamaRMSNorm":
                setattr(parent, name, _RMSNorm64(child))


def _start(seed: int, threads: int) -> tuple[ZooConfig, _Trainer, list, torch.nn.Module]:
    """The default zoo's config, a trainer, the base's pretraining rows and the initial model,
    as the build makes them, at ``threads`` torch threads."""
    torch.set_num_threads(threads)
    config = ZooConfig(seed=seed)
    trainer = _Trainer(config, 0, False, "cpu")
    pretraining = trainer.rows("pretrain", config.per_task("base_rare_mass"))
    return config, trainer, pretraining, trainer.model(config.shape, "init")


def _base_schedule(config: ZooConfig, peak: float):
    """The base phase's learning rate by step, peaking at ``peak`` (the build's: ``base_lr``)."""
    return warmup_cosine(peak, config.base_steps, config.warmup, floor=0.1)


def run(
    mode: str, out: Path, steps: int | None, threads: int, seed: int, lr: float | None,
    expert: str | None = None, zoo: Path | None = None,
) -> None:  # fmt: skip
    config, trainer, pretraining, model = _start(seed, threads)
    if expert is None:  # the base, from its initialisation
        rows, mix, phase = pretraining, config.base_mix, "base"
        peak = config.base_lr if lr is None else lr
        schedule = _base_schedule(config, peak)
        steps = steps or config.base_steps
    else:  # one expert, from the zoo's own base file
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(zoo / "base" / "model.safetensors")))
        rows = [*pretraining, *trainer.rows("data", [None] * len(config.tasks))]
        mix, phase = _expert_mix(config, expert), f"expert:{expert}"
        peak = dict(zip(config.tasks, config.per_task("expert_lr")))[expert] if lr is None else lr
        n = dict(zip(config.tasks, config.expert_steps))[expert]
        schedule = warmup_cosine(peak, n, config.warmup, floor=0.1)
        steps = steps or n
    if mode != "fp32":
        model.to(torch.float64)
    if mode == "fp64-full":
        _to_full_fp64(model)
    snaps: dict[int, dict[str, torch.Tensor]] = {}

    def keep(step: int, _loss: float) -> None:
        if step + 1 in SNAPSHOTS:
            snaps[step + 1] = {
                k: v.detach().double().clone() for k, v in model.state_dict().items()
            }

    start = time.perf_counter()
    losses = finetune(
        model, mixture_batches(rows, mix, config.batch_size), schedule, steps=steps,
        seed=sub_seed(config.seed, phase), on_step=keep,
        loss_fn=_full_loss if mode == "fp64-full" else lm_loss,
    )  # fmt: skip
    took = time.perf_counter() - start
    torch.save({"mode": mode, "phase": phase, "steps": steps, "snapshots": snaps}, out)
    print(
        f"{mode} {phase} (peak lr {peak:g}): {steps} steps in {took:.1f} s "
        f"({1000 * took / steps:.1f} ms a step), {threads} thread(s), "
        f"{torch.backends.cpu.get_cpu_capability()} kernels, final loss {losses[-1]:.6f}, "
        f"weights sha256 {_digest(model)} -> {out}"
    )


def _sha(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def stages(out: Path, threads: int, steps: int, seed: int = 0) -> None:
    """The fingerprint ``stages-compare`` reads (see the module's doc)."""
    import json

    config, _, rows, model = _start(seed, threads)
    found: list[tuple[str, str]] = [(f"init/{k}", _sha(v)) for k, v in model.state_dict().items()]
    first = {"forward": True, "batch": True}

    def on_forward(name: str):
        def hook(_module, _inputs, output) -> None:
            if first["forward"]:
                outs = output.to_tuple() if hasattr(output, "to_tuple") else output
                outs = outs if isinstance(outs, tuple) else (outs,)
                outs = [o for o in outs if isinstance(o, torch.Tensor)]
                found.append((f"forward/{name or 'model'}", _sha(*outs) if outs else "-"))

        return hook

    def on_grad(name: str):
        def hook(param: torch.Tensor) -> None:  # the first backward only: removed after step 1
            found.append((f"grad/{name}", _sha(param.grad)))

        return hook

    handles = [m.register_forward_hook(on_forward(n)) for n, m in model.named_modules()]
    handles += [p.register_post_accumulate_grad_hook(on_grad(n))
                for n, p in model.named_parameters()]  # fmt: skip
    draw = mixture_batches(rows, config.base_mix, config.batch_size)

    def batches(gen: torch.Generator):
        batch = draw(gen)
        if first["batch"]:
            found.append(("batch", _sha(*batch)))
            first["batch"] = False
        return batch

    def loss_fn(model, ids, mask, labels):
        loss = lm_loss(model, ids, mask, labels)
        if first["forward"]:
            found.append(("loss", loss.item().hex()))
            first["forward"] = False
        return loss

    def after(step: int, loss: float) -> None:
        if step == 0:
            for h in handles:
                h.remove()
            found.extend((f"step1/{k}", _sha(v)) for k, v in model.state_dict().items())
        else:
            found.append((f"loss@{step + 1}", float(loss).hex()))

    finetune(model, batches, _base_schedule(config, config.base_lr), steps=steps,
             seed=sub_seed(config.seed, "base"), loss_fn=loss_fn, on_step=after)  # fmt: skip
    found.append((f"weights@{steps}", _digest(model)))
    # the machine as a pool's manifest records it (CPU, torch and transformers versions, kernels)
    machine = {**build_machine(), "threads": threads, "steps": steps}
    out.write_text(json.dumps({"machine": machine, "stages": found}, indent=0) + "\n")
    print(
        f"{len(found)} stages, {torch.backends.cpu.get_cpu_capability()} kernels, weights after "
        f"{steps} steps sha256 {found[-1][1]} -> {out}"
    )


def stages_compare(a_path: Path, b_path: Path) -> None:
    import json

    a, b = (json.loads(p.read_text())["stages"] for p in (a_path, b_path))
    if [k for k, _ in a] != [k for k, _ in b]:
        raise SystemExit(f"{a_path} and {b_path} list other stages (another model or --steps)")
    differ = [k for (k, x), (_, y) in zip(a, b) if x != y]
    groups: dict[str, list[bool]] = {}
    for k, _ in a:
        groups.setdefault(k.split("/")[0].split("@")[0], []).append(k in set(differ))
    print("| stage | entries | differ |")
    print("|---|---|---|")
    for group, flags in groups.items():
        print(f"| {group} | {len(flags)} | {sum(flags)} |")
    print(f"first to differ: {', '.join(differ[:6]) if differ else 'none: the same arithmetic'}")


def _digest(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of every parameter's bytes, by name: equal only if every bit is."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def compare(a_path: Path, b_path: Path) -> None:
    a, b = (torch.load(p)["snapshots"] for p in (a_path, b_path))
    print("| step | relative L2 distance | largest absolute difference | tensors still equal |")
    print("|---|---|---|---|")
    for step in sorted(set(a) & set(b)):
        x, y = a[step], b[step]
        diff = sum(float((x[k] - y[k]).pow(2).sum()) for k in x)
        norm = sum(float(x[k].pow(2).sum()) for k in x)
        largest = max(float((x[k] - y[k]).abs().max()) for k in x)
        equal = sum(torch.equal(x[k], y[k]) for k in x)
        print(f"| {step} | {(diff / norm) ** 0.5:.2e} | {largest:.2e} | {equal} of {len(x)} |")


def score(zoo_dir: Path, runs: list[Path]) -> None:
    """Each run's last snapshot, cast to float32, scored on the zoo's TEST split (exact match),
    beside the zoo's own base and experts."""
    from transformers import AutoTokenizer

    from merge_env.pools.zoo import load_zoo
    from merge_env.scoring.evaluate import Evaluator
    from merge_env.search.assemble import load_causal_lm

    zoo = load_zoo(zoo_dir)
    evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), batch_size=256)
    names = [t.name for t in zoo.tasks]
    print(f"| model | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    rows = [(name, load_causal_lm(path)) for name, path in zoo.checkpoints().items()
            if name == "base" or name.startswith("expert:")]  # fmt: skip
    for run_file in runs:
        saved = torch.load(run_file)
        model = load_causal_lm(zoo.base)
        last = max(saved["snapshots"])
        model.load_state_dict({k: v.float() for k, v in saved["snapshots"][last].items()})
        rows.append((f"{run_file.name} ({saved['mode']}, step {last})", model))
    for name, model in rows:
        got = evaluator.score_tasks(model.eval(), zoo.tasks, "test")
        print(f"| {name} | {' | '.join(f'{got[t].exact_match:.3f}' for t in names)} |")


def pools(a_root: Path, b_root: Path, origin: Path | None) -> None:
    """Two built pools of one config (zoo or SmolLM2), checkpoint by checkpoint: how far B's
    base and experts lie from A's, against the base's norm and against the fine-tune's own
    vector (an expert minus its base; the base minus ``origin``, the model it was tuned from)."""
    from safetensors.torch import load_file

    def weights(folder: Path) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for file in sorted(folder.glob("*.safetensors")):
            out.update({k: v.double() for k, v in load_file(str(file)).items()})
        return out

    def dist(x: dict, y: dict) -> float:
        return sum(float((x[k] - y[k]).pow(2).sum()) for k in x) ** 0.5

    names = ["base"] + sorted(p.name for p in (a_root / "experts").iterdir())
    base_a, base_b = weights(a_root / "base"), weights(b_root / "base")
    norm = sum(float(v.pow(2).sum()) for v in base_a.values()) ** 0.5
    print("| checkpoint | distance / base norm | distance / its fine-tune vector | "
          "cosine of the two fine-tune vectors | bit-equal |")  # fmt: skip
    print("|---|---|---|---|---|")
    origin_w = weights(origin) if origin is not None else None
    for name in names:
        rel = Path("base") if name == "base" else Path("experts") / name
        if name == "base":
            a, b = base_a, base_b
        else:
            a, b = weights(a_root / rel), weights(b_root / rel)
        # each side's fine-tune vector from its own start (the base: from ``origin``)
        start_a, start_b = (origin_w, origin_w) if name == "base" else (base_a, base_b)
        d = dist(a, b)
        vector, cosine = "-", "-"
        if start_a is not None:
            va = {k: a[k] - start_a[k] for k in a}
            vb = {k: b[k] - start_b[k] for k in b}
            dot = sum(float((va[k] * vb[k]).sum()) for k in va)
            size_a, size_b = (
                sum(float(v.pow(2).sum()) for v in x.values()) ** 0.5 for x in (va, vb)
            )
            vector, cosine = f"{d / size_a:.2e}", f"{dot / (size_a * size_b):.4f}"
        equal = all(torch.equal(a[k], b[k]) for k in a)
        print(f"| {name} | {d / norm:.2e} | {vector} | {cosine} | {'yes' if equal else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("mode", choices=MODES)
    r.add_argument("out", type=Path)
    r.add_argument("--steps", type=int, default=None, help="default: the phase's, as built")
    r.add_argument("--threads", type=int, default=1)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--lr", type=float, default=None, help="the peak rate (default: the zoo's)")
    r.add_argument("--expert", default=None, help="train this task's expert instead of the base")
    r.add_argument("--zoo", type=Path, default=None, help="the built zoo whose base it starts from")
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    po = sub.add_parser("pools")
    po.add_argument("a", type=Path)
    po.add_argument("b", type=Path)
    po.add_argument("--origin", type=Path, default=None, help="the model the base was tuned from")
    st = sub.add_parser("stages")
    st.add_argument("out", type=Path)
    st.add_argument("--threads", type=int, default=2)
    st.add_argument("--steps", type=int, default=20)
    sx = sub.add_parser("stages-compare")
    sx.add_argument("a", type=Path)
    sx.add_argument("b", type=Path)
    sc = sub.add_parser("score")
    sc.add_argument("zoo", type=Path)
    sc.add_argument("runs", type=Path, nargs="+")
    args = parser.parse_args()
    if args.command == "score":
        score(args.zoo, args.runs)
    elif args.command == "stages":
        stages(args.out, args.threads, args.steps)
    elif args.command == "stages-compare":
        stages_compare(args.a, args.b)
    elif args.command == "pools":
        pools(args.a, args.b, args.origin)
    elif args.command == "run":
        if args.expert and args.zoo is None:
            parser.error("--expert needs --zoo")
        run(
            args.mode, args.out, args.steps, args.threads, args.seed, args.lr, args.expert, args.zoo
        )
    else:
        compare(args.a, args.b)


if __name__ == "__main__":
    main()
