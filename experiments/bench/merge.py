"""Benchmark the streaming merge engine (and mergekit, where installed) on synthetic checkpoints.

Builds a base Llama and K "fine-tunes" (base + seeded noise) in a temporary folder, merges them
with one method in a fresh subprocess and prints wall time, throughput (GB of input read per
second) and peak RSS of that process, beside a plain memory-copy bandwidth measured in the same
run (the ceiling). When ``mergekit-yaml`` is found (``--mergekit-yaml``, $MERGEKIT_YAML or PATH)
the same YAML runs through it too, and the outputs are compared tensor by tensor.

    python -m experiments.bench_merge --method ties            # base + 3 fine-tunes, ~168M each
    python -m experiments.bench_merge --method linear --hidden 256 --layers 4 --vocab 8000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from merge_env.merging.checkpoint import Checkpoint, CheckpointWriter, TensorSpec

REPO = Path(__file__).resolve().parents[1]
DETERMINISTIC = {"linear", "task_arithmetic", "ties", "slerp", "breadcrumbs", "breadcrumbs_ties"}
DENSITY_CUT = {"ties", "breadcrumbs", "breadcrumbs_ties"}  # where --fast-ties changes the result
# Our merge in a fresh process: import time and merge time reported apart.
_CHILD = """
import dataclasses, json, sys, time
t0 = time.perf_counter()
from merge_env.param_merge import ParamMerge, run_merge
t1 = time.perf_counter()
spec = ParamMerge.load_yaml(sys.argv[1])
if sys.argv[3:] == ["fast"]:
    spec = dataclasses.replace(spec, exact_ties=False)
run_merge(spec, sys.argv[2], progress=False)
print(json.dumps({"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}))
"""


def llama_config(args: argparse.Namespace) -> dict:
    """A transformers LlamaConfig dict for the synthetic model."""
    from transformers import LlamaConfig

    heads = max(1, args.hidden // 64)
    cfg = LlamaConfig(
        hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=heads,
        vocab_size=args.vocab, max_position_embeddings=2048, tie_word_embeddings=False,
    )  # fmt: skip
    out = cfg.to_dict()
    out["architectures"] = ["LlamaForCausalLM"]
    return out


def llama_specs(args: argparse.Namespace) -> list[TensorSpec]:
    """Every tensor of the synthetic Llama, in the order HF lays it out."""
    h, i, f32 = args.hidden, args.intermediate, torch.float32
    specs = [TensorSpec("model.embed_tokens.weight", f32, (args.vocab, h))]
    for layer in range(args.layers):
        p = f"model.layers.{layer}."
        specs += [TensorSpec(p + "input_layernorm.weight", f32, (h,)),
                  TensorSpec(p + "post_attention_layernorm.weight", f32, (h,))]  # fmt: skip
        specs += [TensorSpec(f"{p}self_attn.{n}_proj.weight", f32, (h, h)) for n in "qkvo"]
        specs += [TensorSpec(p + "mlp.gate_proj.weight", f32, (i, h)),
                  TensorSpec(p + "mlp.up_proj.weight", f32, (i, h)),
                  TensorSpec(p + "mlp.down_proj.weight", f32, (h, i))]  # fmt: skip
    specs += [TensorSpec("model.norm.weight", f32, (h,)),
              TensorSpec("lm_head.weight", f32, (args.vocab, h))]  # fmt: skip
    return specs


def build_pool(root: Path, args: argparse.Namespace) -> list[Path]:
    """Write base + K fine-tunes (base + seeded noise) tensor by tensor; returns their folders."""
    config, specs = llama_config(args), llama_specs(args)
    paths = [root / "base"] + [root / f"ft{k}" for k in range(args.k)]
    writers = [CheckpointWriter(p, specs, config=config) for p in paths]
    for w in writers:
        w.__enter__()
    g = torch.Generator().manual_seed(args.seed)
    for spec in specs:
        if spec.name.endswith("norm.weight"):
            base = torch.ones(spec.shape) + 0.01 * torch.randn(spec.shape, generator=g)
        else:
            base = 0.02 * torch.randn(spec.shape, generator=g)
        writers[0].write(spec.name, base)
        for w in writers[1:]:
            w.write(spec.name, base + args.noise * torch.randn(spec.shape, generator=g))
    for w in writers:
        w.__exit__(None, None, None)
    return paths


def write_recipe(path: Path, method: str, pool: list[Path], density: float) -> Path:
    """A mergekit YAML for ``method`` over the pool (base first)."""
    base, fts = pool[0], pool[1:]
    if method == "slerp":
        models = [{"model": str(base)}, {"model": str(fts[0])}]
        data = {"merge_method": method, "base_model": str(base), "models": models,
                "parameters": {"t": [0.2, 0.8]}}  # fmt: skip
    else:
        per = {"weight": round(1.0 / len(fts), 4)}
        if method != "linear" and method != "task_arithmetic":
            per["density"] = density
        data = {"merge_method": method, "models": [
            {"model": str(f), "parameters": dict(per)} for f in fts]}  # fmt: skip
        if method != "linear":
            data["base_model"] = str(base)
        data["dtype"] = "float32"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# A tiny launcher between us and the measured process: Linux carries a parent's peak RSS into
# a forked child's ru_maxrss, so the child of this small process reports only its own.
_LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
p = subprocess.Popen(sys.argv[2:])
_, status, u = os.wait4(p.pid, 0)
json.dump({"wall": time.perf_counter() - t0, "rc": os.waitstatus_to_exitcode(status),
           "maxrss_kb": u.ru_maxrss, "cpu": u.ru_utime + u.ru_stime}, open(sys.argv[1], "w"))
"""


def run_child(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; returns its wall and CPU seconds, peak RSS (GB) and stdout."""
    with tempfile.TemporaryDirectory() as tmp:
        stats, out, err = Path(tmp) / "stats.json", Path(tmp) / "out", Path(tmp) / "err"
        with open(out, "w") as fo, open(err, "w") as fe:
            launcher = [sys.executable, "-c", _LAUNCHER, str(stats), *cmd]
            subprocess.run(launcher, stdout=fo, stderr=fe, env=env, check=False)
        res = json.loads(stats.read_text()) if stats.is_file() else {"rc": -1}
        if res["rc"] != 0:
            raise SystemExit(f"{cmd[0]} failed ({res['rc']}):\n{err.read_text()[-3000:]}")
        return {
            "wall": res["wall"],
            "cpu": res["cpu"],
            "rss": res["maxrss_kb"] / 2**20,
            "stdout": out.read_text(),
        }


def memcpy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """GB/s of a plain tensor copy (bytes read), the ceiling for a merge that reads each byte."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best / 1e9


def page_cache_read_bandwidth(paths: list[Path]) -> float:
    """GB/s reading the (cached) input files into one reused buffer."""
    files = [f for p in paths for f in p.glob("*.safetensors")]
    buf = bytearray(64 * 2**20)
    view = memoryview(buf)
    total, t0 = 0, time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(view):
                total += n
    return total / (time.perf_counter() - t0) / 1e9


def compare(ours: Path, theirs: Path) -> tuple[float, float]:
    """(max over tensors of max|a - b| / max|b|, fraction of entries that differ)."""
    a, b = Checkpoint(ours), Checkpoint(theirs)
    if set(a.names) != set(b.names):
        raise SystemExit(f"tensor names differ: {sorted(set(a.names) ^ set(b.names))[:5]}")
    worst, differ, total = 0.0, 0, 0
    for name in a.names:
        x, y = a.get(name).double(), b.get(name).double()
        worst = max(worst, ((x - y).abs().max() / y.abs().max().clamp_min(1e-30)).item())
        differ += int((x != y).sum())
        total += x.numel()
    return worst, differ / total


def find_mergekit(explicit: str | None) -> str | None:
    """Path of mergekit-yaml from the flag, $MERGEKIT_YAML, or PATH."""
    for cand in (explicit, os.environ.get("MERGEKIT_YAML"), shutil.which("mergekit-yaml")):
        if cand and Path(cand).is_file():
            return cand
    return None


def main(argv: list[str] | None = None) -> int:
    """Build the pool, run the merges, print the figures."""
    p = argparse.ArgumentParser(prog="python -m experiments.bench_merge", description=__doc__)
    p.add_argument("--method", default="ties")
    p.add_argument("--k", type=int, default=3, help="number of fine-tunes (plus one base)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each merge (best is reported)")
    p.add_argument("--mergekit-yaml", default=None, help="mergekit-yaml executable")
    p.add_argument("--no-mergekit", action="store_true")
    p.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic models")
    args = p.parse_args(argv)

    per_model = sum(s.nbytes for s in llama_specs(args))
    need = per_model * (args.k + 3)  # inputs + our output + mergekit's output
    root = Path(tempfile.mkdtemp(prefix="bench_merge_", dir=args.workdir))
    free = shutil.disk_usage(root).free
    print(f"model: {per_model / 4e6:.1f}M params, {per_model / 1e6:.0f} MB fp32; base + {args.k}"
          f" fine-tunes; need {need / 1e9:.1f} GB, free {free / 1e9:.1f} GB in {root}")  # fmt: skip
    if free < 1.2 * need:
        shutil.rmtree(root)
        print("not enough disk space")
        return 1
    try:
        t0 = time.perf_counter()
        pool = build_pool(root, args)
        print(f"built pool in {time.perf_counter() - t0:.1f} s")
        recipe = write_recipe(root / "recipe.yml", args.method, pool, args.density)
        inputs = len(yaml.safe_load(recipe.read_text())["models"])
        inputs += 0 if args.method in ("linear", "slerp") else 1
        in_bytes = per_model * inputs
        print(f"memcpy bandwidth: {memcpy_bandwidth():.2f} GB/s; page-cache file read: "
              f"{page_cache_read_bandwidth(pool):.2f} GB/s")  # fmt: skip

        os.sync()  # neither tool should pay for the pool's writeback
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        mk = None if args.no_mergekit else find_mergekit(args.mergekit_yaml)
        runs: dict[str, list[tuple[list[str], dict | None]]] = {}
        variants = ["exact"] + (["fast"] if args.method in DENSITY_CUT else [])
        for v in variants:
            out = root / f"ours-{v}"
            cmd = [sys.executable, "-c", _CHILD, str(recipe), str(out)] + (
                ["fast"] if v == "fast" else []
            )
            runs[f"mergegym{' --fast-ties' if v == 'fast' else ''}"] = [(cmd, env), out]
        if mk is not None:
            runs["mergekit 0.1.5"] = [
                ([mk, str(recipe), str(root / "mergekit"), "--quiet"], None),
                root / "mergekit",
            ]
        best: dict[str, dict] = {}
        for _ in range(args.repeat):  # interleaved, so load drifts hit every tool alike
            for label, ((cmd, cenv), out) in runs.items():
                shutil.rmtree(out, ignore_errors=True)
                r = run_child(cmd, cenv)
                if label not in best or r["wall"] < best[label]["wall"]:
                    best[label] = r
        gb = in_bytes / 1e9
        print(
            f"\n{'tool':24s} {'wall s':>7s} {'CPU s':>7s} {'GB/s':>6s} {'peak RSS GB':>12s}  notes"
        )
        for label, r in best.items():
            note = ""
            if label.startswith("mergegym"):
                inner = json.loads(r["stdout"].strip().splitlines()[-1])
                note = f"import {inner['import_s']:.1f} s, merge {inner['merge_s']:.1f} s"
            print(
                f"{label:24s} {r['wall']:7.2f} {r['cpu']:7.1f} {gb / r['wall']:6.2f} {r['rss']:12.2f}  {note}"
            )
        if mk is None:
            print("mergekit: not found (--mergekit-yaml, $MERGEKIT_YAML or PATH)")
            return 0
        m = best["mergekit 0.1.5"]
        for label, (_, out) in runs.items():
            if not label.startswith("mergegym"):
                continue
            r = best[label]
            err, frac = compare(out, root / "mergekit")
            if args.method not in DETERMINISTIC:
                verdict = "random masks: not comparable"
            elif "fast" in label:
                verdict = "ties ranked by position: differs only at equal magnitudes on the cut"
            else:
                verdict = "ok" if err <= 1e-5 else "TOO LARGE"
            print(
                f"{label}: {m['wall'] / r['wall']:.2f}x faster (wall), {m['cpu'] / r['cpu']:.2f}x "
                f"less CPU, peak RSS {r['rss']:.2f} vs {m['rss']:.2f} GB; vs mergekit: max rel "
                f"error {err:.2e}, {frac:.1e} of entries differ ({verdict})"
            )
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
