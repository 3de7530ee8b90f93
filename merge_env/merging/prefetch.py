"""Reads overlapped with compute: the inputs of the next tensors are read while one merges.

A merge reads every input tensor once and computes on it once, so on a machine whose page cache
holds the inputs the two costs are of one size. ``Prefetcher`` reads the inputs of the tensors
to merge, in streaming order, on one background thread (``Checkpoint.read``: positioned reads,
which release the GIL), at most ``max_bytes`` of inputs held at once, counting those still being
merged: memory stays bounded however far the reader could run ahead.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch import Tensor

Read = Callable[[str], list[Tensor]]


class Prefetcher:
    """Yields ``(name, nbytes, inputs)`` in the order of ``jobs`` (``(name, nbytes)`` pairs),
    read ahead on a thread; ``release(nbytes)`` once a tensor's inputs are no longer held.

    One tensor is always read, however large; beyond it the reader waits while the bytes held
    would exceed ``max_bytes``. A read that fails raises in the consumer, at that tensor.
    """

    def __init__(self, jobs: Sequence[tuple[str, int]], read: Read, max_bytes: int) -> None:
        self.jobs = list(jobs)
        self.max_bytes = int(max_bytes)
        self._read = read
        self._held = 0
        self._stop = False
        self._cond = threading.Condition()
        self._ready: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="merge-read", daemon=True)

    def _run(self) -> None:
        try:
            for name, nbytes in self.jobs:
                with self._cond:
                    while self._held and self._held + nbytes > self.max_bytes and not self._stop:
                        self._cond.wait()
                    if self._stop:
                        return
                    self._held += nbytes
                self._ready.put((name, nbytes, self._read(name)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._ready.put(exc)

    def __iter__(self) -> Iterator[tuple[str, int, list[Tensor]]]:
        for _ in self.jobs:
            item = self._ready.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    def release(self, nbytes: int) -> None:
        """A tensor's inputs (``nbytes``) are no longer held: the reader may go on."""
        with self._cond:
            self._held -= nbytes
            self._cond.notify_all()

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
