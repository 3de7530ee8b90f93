"""A least-recently-used map bounded by the bytes of what it holds.

The one eviction policy behind the caches a search keeps between candidates: the prefix hidden
states of ``scoring/prefix.py`` and DARE's kept draws in ``merging/sparsify.py``. Each entry
carries the size its owner counts for it; a put evicts the least recently used entries until
the total is within ``max_bytes`` again. An entry larger than the whole bound is not kept.
Thread-safe (the merge engine's workers share one). Standard library only, so the merge CLI's
lean import path can use it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class ByteLRU:
    """{key: value} holding at most ``max_bytes`` of values (0 holds none), least recent out."""

    def __init__(self, max_bytes: int, what: str = "cache") -> None:
        if max_bytes < 0:
            raise ValueError(f"{what}: max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = self.misses = self.evictions = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Any | None:
        """The value under ``key`` (now the most recent), or None; counted as a hit or a miss."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` (counted as ``size`` bytes), replacing what ``key`` held and evicting
        the least recent entries until the bound holds; False where it alone exceeds the bound."""
        if size > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
                self.evictions += 1
        return True

    def clear(self) -> None:
        """Drop every entry (the counts stay)."""
        with self._lock:
            self._items.clear()
            self.bytes = 0
