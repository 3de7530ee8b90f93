"""The builder's "own task vector alone" shares, from the outside: mergekit merges, plain
``transformers`` greedy generation scores.

    python results/converged_base_study/alone_mergekit.py ZOO_DIR METHOD LAMBDA [--mergekit PATH]

METHOD ``task_arithmetic``: base + λ τ of each expert alone (mergekit task_arithmetic, one
model at weight λ); ``ties``: TIES of that expert alone (density 0.5, normalised, λ as
mergekit's ``lambda``). Prints, per expert, its own-task TEST exact match alone and the share of
its gain over the base that keeps, to set beside the ``where ... loses the gains`` line of
``python -m experiments.build_zoo``.
"""

import argparse
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("zoo", type=Path)
    parser.add_argument("method", choices=["task_arithmetic", "ties"])
    parser.add_argument("lam", type=float)
    parser.add_argument("--mergekit", default=shutil.which("mergekit-yaml") or "mergekit-yaml")
    args = parser.parse_args()
    manifest = json.loads((args.zoo / "zoo.json").read_text())
    base = args.zoo / manifest["base"]
    tokenizer_dir = args.zoo / manifest["tokenizer"]
    tests = {t["name"]: t["test"] for t in manifest["tasks"]}
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token

    def exact_match(path: Path, task: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        rows = tests[task]
        enc = tok([prompt for prompt, _ in rows], return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, max_new_tokens=16,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)  # fmt: skip
        text = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return sum(g.strip() == a.strip() for g, (_, a) in zip(text, rows, strict=True)) / len(rows)

    work = Path(tempfile.mkdtemp(prefix="alone-"))
    for task, rel in manifest["experts"].items():
        expert = args.zoo / rel
        model = {"model": str(expert), "parameters": {"weight": args.lam}}
        config = {"merge_method": args.method, "base_model": str(base), "dtype": "float32"}
        if args.method == "ties":
            model["parameters"] = {"weight": 1.0, "density": 0.5}
            config["parameters"] = {"normalize": True, "lambda": args.lam}
        config["models"] = [model]
        spec = work / f"{task}.yml"
        spec.write_text(yaml.safe_dump(config))
        merged = work / task
        subprocess.run([args.mergekit, str(spec), str(merged)], check=True, capture_output=True)
        for side in tokenizer_dir.iterdir():
            if side.is_file() and not (merged / side.name).exists():
                shutil.copy(side, merged / side.name)
        at_base, own = exact_match(base, task), exact_match(expert, task)
        alone = exact_match(merged, task)
        share = (alone - at_base) / (own - at_base) if own > at_base else float("nan")
        print(f"{args.zoo.name} {args.method} λ{args.lam:g} {task}: base {at_base:.3f}, "
              f"expert {own:.3f}, its vector alone {alone:.3f}: share {share:.2f}")  # fmt: skip
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
