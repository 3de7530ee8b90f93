"""Benchmark teacher-forced scoring: examples/s, and the cost over a bare forward pass.

    python -m experiments.bench_eval                      # random 6-layer width-128 char Llama
    python -m experiments.bench_eval --model DIR --n 512 --batch-size 64 --device cuda
    python -m experiments.bench_eval --pool smollm2 --n 32   # SmolLM2-135M, chat-templated tasks

The bare forward runs the model over exactly the padded batches the evaluator builds, so the ratio
(scoring time / forward time) is what the scoring loop adds: encoding, gathering answer positions,
log-softmax over them, metrics. With a model that takes ``logits_to_keep`` the scorer can even be
faster than the bare forward, since it skips the LM head on prompt positions.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import torch

from merge_env.scoring.evaluate import Evaluator
from merge_env.scoring.tasks.synthetic import ZOO_TASK_KINDS, char_tokenizer, make_task


def random_llama(device: torch.device, seed: int) -> tuple[Any, Any]:
    """Return (model, tokenizer): a random 6-layer, width-128 Llama with the char tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).to(device).eval(), tok


def load_model(path: str, device: torch.device, dtype: torch.dtype | None) -> tuple[Any, Any]:
    """Return (model, tokenizer) from an HF model directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    return model.to(device).eval(), AutoTokenizer.from_pretrained(path)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Return the wall time of one call of ``fn``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the benchmark and print a result table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="HF causal-LM directory (default: random char Llama)")
    parser.add_argument(
        "--pool",
        choices=["smollm2"],
        help="smollm2: the converted SmolLM2-135M-Instruct base on chat-templated zoo tasks",
    )
    parser.add_argument("--tasks", default=",".join(ZOO_TASK_KINDS), help="zoo task kinds")
    parser.add_argument("--n", type=int, default=512, help="examples per task")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: its)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.pool == "smollm2":
        from merge_env.pools.gguf import converted_base
        from merge_env.pools.smollm2 import chat_tasks

        args.model = str(converted_base())
        model, tok = load_model(args.model, device, dtype)
        tasks = chat_tasks(tok, args.tasks.split(","), args.n, 0, args.seed)
    else:
        if args.model:
            model, tok = load_model(args.model, device, dtype)
        else:
            model, tok = random_llama(device, args.seed)
            if dtype is not None:
                model = model.to(dtype)
        tasks = [make_task(kind, args.n, 0, args.seed) for kind in args.tasks.split(",")]
    n_examples = sum(len(t.search) for t in tasks)

    cold_ev = Evaluator(tok, device=device, batch_size=args.batch_size)
    cold = timed(lambda: cold_ev.score_tasks(model, tasks), device)  # tokenising, warm-up
    ev = Evaluator(tok, device=device, batch_size=args.batch_size)
    batches = [(i.to(device), m.to(device)) for i, m in ev.padded_batches(tasks)]

    def bare_forward() -> None:
        with torch.inference_mode():
            for input_ids, mask in batches:
                model(input_ids=input_ids, attention_mask=mask, use_cache=False)

    vocab = len(tok)

    class NoModel(torch.nn.Module):
        """Zero logits at no cost: what is left of a score is the scoring loop itself."""

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return torch.zeros(*input_ids.shape, vocab, device=input_ids.device)

    # Interleaved, best of n: on a shared machine the minimum is the least disturbed run.
    bare_runs, warm_runs, loop_runs = [], [], []
    for _ in range(args.repeats):
        bare_runs.append(timed(bare_forward, device))
        warm_runs.append(timed(lambda: ev.score_tasks(model, tasks), device))
        loop_runs.append(timed(lambda: ev.score_tasks(NoModel(), tasks), device))
    bare, warm, loop = min(bare_runs), min(warm_runs), min(loop_runs)
    tokens = sum(int(m.sum()) for _, m in batches)
    padded = sum(m.numel() for _, m in batches)

    print(f"device {device}  threads {torch.get_num_threads()}  model {args.model or 'random'}")
    print(f"tasks {args.tasks}  examples {n_examples}  batches {len(batches)}  ", end="")
    print(f"tokens {tokens} (padded {padded}, {padded / tokens - 1:.1%} padding)")
    print(f"{'':24}{'seconds':>10}{'examples/s':>12}{'x forward':>11}")
    for label, secs in [
        ("bare forward", bare),
        ("score (warm)", warm),
        ("score (cold: first call)", cold),
        ("scoring loop alone", loop),
    ]:
        print(f"{label:24}{secs:10.3f}{n_examples / secs:12.0f}{secs / bare:11.2f}")


if __name__ == "__main__":
    main()
