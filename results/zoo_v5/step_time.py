"""How long one training step of the default zoo's model takes, by batch rows, fp32 and bf16.

    python results/zoo_v5/step_time.py [--threads 2] [--steps 30]

The step the zoo trains with (forward, loss, backward, clipping, AdamW) on random rows of 19
tokens (the longest zoo example), timed after 5 warm-up steps; fp32 as the zoo trains, and under
CPU bf16 autocast for comparison. Prints milliseconds per step: whether the build is compute-bound
(time linear in the rows) and what lower precision would save.
"""

from __future__ import annotations

import argparse
import time

import torch

from merge_env.pools.zoo import ModelShape, _new_model, char_tokenizer


def step_ms(rows: int, bf16: bool, steps: int) -> float:
    model = _new_model(ModelShape(), char_tokenizer(), 0, "cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 40, (rows, 19), generator=gen)
    mask = torch.ones_like(ids)

    def one() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(5):
        one()
    start = time.perf_counter()
    for _ in range(steps):
        one()
    return 1000.0 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.steps} steps a figure")
    for rows in (64, 128, 192):
        fp32, bf16 = step_ms(rows, False, args.steps), step_ms(rows, True, args.steps)
        print(f"{rows:4d} rows: fp32 {fp32:6.1f} ms, bf16 autocast {bf16:6.1f} ms")


if __name__ == "__main__":
    main()
