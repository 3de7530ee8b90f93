"""Benchmark the streaming merge engine against mergekit on synthetic checkpoints, side by side.

Builds a base Llama and K "fine-tunes" (base + seeded noise) in a temporary folder and, for each
method (default: linear and TIES, issue 18's pair), merges them in fresh subprocesses with
MergeGym and, when found (``--mergekit-yaml``, $MERGEKIT_YAML or PATH; its venv's python runs
it), with mergekit. Per tool: the process's wall time, and the time once the interpreter is up
(imports apart from the merge; the CLI imports torch only when its lean linear path does
not apply, so the full engine's torch import counts in the merge time), CPU time and peak RSS; then the ratios against issue 18's
targets (linear >= 5x and TIES >= 3x mergekit's wall time, peak RSS <= half of mergekit's),
linear's effective read rate (input bytes / in-process merge time) against a memory copy
measured in the same run (target >= 25 %), the outputs compared tensor by tensor, and the load
average the figures were measured under.

    python -m experiments.bench_merge                          # base + 3 fine-tunes, ~168M each
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
# Our merge in a fresh process, through the CLI (``python -m experiments.merge``, which runs a
# plain linear recipe without torch): import time and merge time reported apart.
_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from experiments.merge import main
t1 = time.perf_counter()
fast = ["--fast-ties"] if sys.argv[3:] == ["fast"] else []
if main([sys.argv[1], sys.argv[2], "--no-progress", *fast]) != 0:
    sys.exit(1)
print(json.dumps({"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}))
"""
# mergekit in a fresh process of its own venv, timed the same way (what mergekit-yaml runs)
_MERGEKIT_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
t1 = time.perf_counter()
source = open(sys.argv[1]).read()
options = MergeOptions(quiet=True)
options.apply_global_options()
run_merge(MergeConfiguration.model_validate(yaml.safe_load(source)), sys.argv[2],
          options=options, config_source=source)
print(json.dumps({"import_s": t1 - t0, "merge_s": time.perf_counter() - t1}))
"""
# issue 18's targets: MergeGym's wall-time speed-up over mergekit per method, and peak RSS
SPEEDUP_TARGET = {"linear": 5.0, "ties": 3.0}
RSS_TARGET = 0.5  # of mergekit's peak RSS
READ_RATE_TARGET = 0.25  # linear's input bytes per in-process second, of the memcpy rate


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
    """Path of mergekit-yaml from the flag, $MERGEKIT_YAML, PATH, or beside this python."""
    beside = Path(sys.executable).parent / "mergekit-yaml"
    for cand in (explicit, os.environ.get("MERGEKIT_YAML"), shutil.which("mergekit-yaml"), beside):
        if cand and Path(cand).is_file():
            return str(cand)
    return None


def tool_runs(
    method: str, recipe: Path, root: Path, mergekit: str | None
) -> dict[str, tuple[list[str], dict | None, Path]]:
    """label -> (command, environment, output folder) of every tool run for one method."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = {}
    for v in ["exact"] + (["fast"] if method in DENSITY_CUT else []):
        out = root / f"{method}-ours-{v}"
        cmd = [sys.executable, "-c", _CHILD, str(recipe), str(out)] + (
            ["fast"] if v == "fast" else []
        )
        runs[f"mergegym{' --fast-ties' if v == 'fast' else ''}"] = (cmd, env, out)
    if mergekit is not None:
        python = Path(mergekit).parent / "python"
        out = root / f"{method}-mergekit"
        runs["mergekit 0.1.5"] = ([str(python), "-c", _MERGEKIT_CHILD, str(recipe), str(out)],
                                  None, out)  # fmt: skip
    return runs


def best_of(runs: dict, repeat: int) -> dict[str, dict]:
    """Each run ``repeat`` times, interleaved so load drifts hit every tool alike; the fastest
    (by wall time) of each, with its in-process times."""
    best: dict[str, dict] = {}
    for _ in range(repeat):
        for label, (cmd, cenv, out) in runs.items():
            shutil.rmtree(out, ignore_errors=True)
            r = run_child(cmd, cenv)
            r.update(json.loads(r["stdout"].strip().splitlines()[-1]))
            if label not in best or r["wall"] < best[label]["wall"]:
                best[label] = r
    return best


def report(method: str, best: dict, runs: dict, in_bytes: int, memcpy: float) -> list[str]:
    """Print one method's table and its comparison; returns the verdict lines on the targets."""
    gb = in_bytes / 1e9
    print(f"\n== {method}: {gb:.2f} GB of inputs ==")
    print(f"{'tool':24s} {'wall s':>7s} {'in-proc s':>9s} {'import s':>8s} {'CPU s':>7s} "
          f"{'GB/s':>6s} {'peak RSS GB':>11s}")  # fmt: skip
    for label, r in best.items():
        print(f"{label:24s} {r['wall']:7.2f} {r['merge_s']:9.2f} {r['import_s']:8.2f} "
              f"{r['cpu']:7.1f} {gb / r['merge_s']:6.2f} {r['rss']:11.2f}")  # fmt: skip
    ours, verdicts = best["mergegym"], []
    if method == "linear":
        rate = gb / ours["merge_s"]
        verdicts.append(f"linear read rate once up: {rate:.2f} GB/s = {rate / memcpy:.0%} of "
                        f"memcpy (target >= {READ_RATE_TARGET:.0%}): "
                        f"{_met(rate / memcpy >= READ_RATE_TARGET)}")  # fmt: skip
    m = best.get("mergekit 0.1.5")
    if m is None:
        print("mergekit: not found (--mergekit-yaml, $MERGEKIT_YAML or PATH)")
        return verdicts
    for label, r in best.items():
        if not label.startswith("mergegym"):
            continue
        err, frac = compare(runs[label][2], runs["mergekit 0.1.5"][2])
        if method not in DETERMINISTIC:
            verdict = "random masks: not comparable"
        elif "fast" in label:
            verdict = "ties ranked by position: differs only at equal magnitudes on the cut"
        else:
            verdict = "ok" if err <= 1e-5 else "TOO LARGE"
        print(f"{label}: {m['wall'] / r['wall']:.2f}x mergekit's wall time "
              f"({m['merge_s'] / r['merge_s']:.2f}x in-process), {m['cpu'] / r['cpu']:.2f}x less "
              f"CPU, peak RSS {r['rss'] / m['rss']:.2f} of mergekit's; max rel error "
              f"{err:.2e}, {frac:.1e} of entries differ ({verdict})")  # fmt: skip
    speedup, rss = m["wall"] / ours["wall"], ours["rss"] / m["rss"]
    target = SPEEDUP_TARGET.get(method)
    if target is not None:
        verdicts.append(f"{method} wall time {speedup:.2f}x mergekit's (target >= {target:g}x): "
                        f"{_met(speedup >= target)}")  # fmt: skip
    verdicts.append(f"{method} peak RSS {rss:.2f} of mergekit's (target <= {RSS_TARGET:g}): "
                    f"{_met(rss <= RSS_TARGET)}")  # fmt: skip
    return verdicts


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    """Build the pool, run every method with every tool, print the figures side by side."""
    p = argparse.ArgumentParser(prog="python -m experiments.bench_merge", description=__doc__)
    p.add_argument("--method", default="linear,ties", help="comma-separated merge methods")
    p.add_argument("--k", type=int, default=3, help="number of fine-tunes (plus one base)")
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--noise", type=float, default=0.002)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1, help="runs of each merge (best is reported)")
    p.add_argument("--mergekit-yaml", default=None, help="mergekit-yaml of mergekit's venv")
    p.add_argument("--no-mergekit", action="store_true")
    p.add_argument("--workdir", default=None, help="where to build (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the synthetic models")
    args = p.parse_args(argv)
    methods = [m.strip() for m in args.method.split(",") if m.strip()]

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
    load_before, verdicts = _load(), []
    try:
        t0 = time.perf_counter()
        pool = build_pool(root, args)
        print(f"built pool in {time.perf_counter() - t0:.1f} s")
        memcpy = memcpy_bandwidth()
        print(f"memcpy bandwidth: {memcpy:.2f} GB/s; page-cache file read: "
              f"{page_cache_read_bandwidth(pool):.2f} GB/s")  # fmt: skip
        os.sync()  # neither tool should pay for the pool's writeback
        mk = None if args.no_mergekit else find_mergekit(args.mergekit_yaml)
        for method in methods:
            recipe = write_recipe(root / f"{method}.yml", method, pool, args.density)
            inputs = len(yaml.safe_load(recipe.read_text())["models"])
            inputs += 0 if method in ("linear", "slerp") else 1
            runs = tool_runs(method, recipe, root, mk)
            best = best_of(runs, args.repeat)
            verdicts += report(method, best, runs, per_model * inputs, memcpy)
            for _, _, out in runs.values():
                shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\ntargets (issue 18), measured under load (load average {load_before} before, "
          f"{_load()} after; {os.cpu_count()} CPUs):")  # fmt: skip
    for line in verdicts:
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
