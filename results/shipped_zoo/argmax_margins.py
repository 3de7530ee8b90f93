"""How far the shipped zoo's scores are from a float rounding flip (session 33).

A cell of the zoo table counts the TEST examples whose every answer token is the model's argmax
(teacher-forced). Another CPU rounds the logits differently, in the last bits; a cell can only
change where the top two logits of some scored position are that close. This script hooks the
head of the base and each expert of the shipped zoo, runs MergeGym's own scoring of every task's
TEST split, and prints the smallest gap between the top two logits over every scored position,
beside the logits' size, and how many positions have a gap under 1e-3 and 1e-2.

    python results/shipped_zoo/argmax_margins.py [--save F.pt] [--compare A.pt B.pt]

``--save`` keeps every scored position's logits; ``--compare`` prints the largest difference
between two such files, e.g. the same scoring under two kernel paths (ATEN_CPU_CAPABILITY):
how far apart two machines' logits come, next to the smallest gap above. About 15 s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
from transformers import AutoTokenizer

from merge_env.pools.zoo import ZooConfig, build_zoo
from merge_env.scoring.evaluate import Evaluator
from merge_env.search.assemble import load_causal_lm


def compare(a: str, b: str) -> None:
    """Print the largest absolute logit difference between two ``--save`` files, per model."""
    left, right = torch.load(a), torch.load(b)
    for name in left:
        d = (left[name] - right[name]).abs().max().item()
        print(f"{name:15s} largest |logit difference| {d:.3e}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save", default=None)
    parser.add_argument("--compare", nargs=2, default=None)
    args = parser.parse_args(argv)
    if args.compare:
        compare(*args.compare)
        return
    saved = {}
    print(f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}", file=sys.stderr)
    with tempfile.TemporaryDirectory() as cache:
        zoo = build_zoo(ZooConfig.preset("default"), cache, progress=False)  # the shipped copy
        assert zoo.installed, "the default zoo's seed 0 no longer ships"
        evaluator = Evaluator(AutoTokenizer.from_pretrained(zoo.tokenizer_dir), batch_size=256)
        print(f"shipped zoo {zoo.root.name}, TEST split, {len(zoo.tasks[0].test)} examples a task")
        print("model           positions  smallest top-2 gap  |logit| max  gaps<1e-3  gaps<1e-2")
        for name, path in zoo.checkpoints().items():
            model = load_causal_lm(path)
            logits: list[torch.Tensor] = []

            def hook(module, args, out, keep=logits):
                keep.append(out.detach().float().clone())

            handle = model.get_output_embeddings().register_forward_hook(hook)
            evaluator.score_tasks(model, zoo.tasks, "test")
            handle.remove()
            saved[name] = all_logits = torch.cat(logits)
            top = all_logits.topk(2, dim=-1).values
            g = top[:, 0] - top[:, 1]
            scale = all_logits.abs().amax().item()
            print(
                f"{name:15s} {g.numel():9d}  {g.min().item():18.3e}  "
                f"{scale:11.2f}  {(g < 1e-3).sum().item():9d}  "
                f"{(g < 1e-2).sum().item():9d}"
            )
    if args.save:
        torch.save(saved, args.save)


if __name__ == "__main__":
    main()
