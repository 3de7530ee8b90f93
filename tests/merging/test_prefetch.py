"""Prefetcher: order, the bound on bytes held, and a failing read."""

from __future__ import annotations

import threading

import pytest
import torch

from merge_env.errors import CheckpointError
from merge_env.merging.prefetch import Prefetcher


def test_order_kept_and_bytes_held_bounded():
    jobs = [(f"t{i}", size) for i, size in enumerate([40, 10, 10, 100, 10, 30])]
    held, peak, lock = [0], [0], threading.Lock()

    def read(name):
        with lock:
            held[0] += dict(jobs)[name]
            peak[0] = max(peak[0], held[0])
        return [torch.full((1,), float(name[1:]))]

    seen = []
    with Prefetcher(jobs, read, max_bytes=50) as reads:
        for name, nbytes, inputs in reads:
            seen.append((name, inputs[0].item()))
            with lock:
                held[0] -= nbytes
            reads.release(nbytes)
    assert seen == [(f"t{i}", float(i)) for i in range(len(jobs))]
    assert peak[0] == 100  # never over the bound, except one tensor larger than it alone


def test_a_failing_read_raises_in_the_consumer_at_its_tensor():
    def read(name):
        if name == "b":
            raise CheckpointError("b.safetensors: cannot read tensor 'b'")
        return []

    got = []
    with pytest.raises(CheckpointError, match="'b'"):
        with Prefetcher([("a", 1), ("b", 1), ("c", 1)], read, max_bytes=10) as reads:
            for name, nbytes, _ in reads:
                got.append(name)
                reads.release(nbytes)
    assert got == ["a"]
