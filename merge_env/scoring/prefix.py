"""Prefix-shared scoring: hidden states after a shared path prefix are computed once.

Candidates scored together often share their parameter merge and their first path slots, and the
hidden states after such a prefix are the same tensors for every one of them. The assembler
describes each candidate as a ``PathModel``: its slot layers, one key per prefix (equal keys mean
equal hidden states on equal inputs) and a way to build the shell model around any layer list.
``PrefixRun`` then runs one example batch over all candidates in trie order (sorted by key, so
candidates sharing a prefix are neighbours): each candidate starts from the deepest prefix state
already known, replayed by ``Replay`` in place of its first slots, and ``Tap`` records the states
after its remaining slots. In trie order the deepest prefix a candidate shares with any earlier
one is the one it shares with its predecessor, so only the states at those branch points are
pinned until the candidates starting there have run (at most one per branch point on the current
trie branch, not one per depth); the others go to a ``PrefixCache``, an LRU bounded by bytes,
where later calls on the same example batch find them.

The model around the replayed state is the shell's own forward (embeddings, attention mask,
position ids, rotary tables, later slots, final norm, head), so the state reaching each later
slot, and so every logit, is bit for bit what the candidate's own assembled model computes.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from merge_env.lru import ByteLRU

# the key of a prefix state: (scope of the example batch, prefix key)
StateKey = tuple[Hashable, Hashable]


@dataclass(frozen=True)
class PathModel:
    """A candidate as prefix sharing sees it: a shell model around a path of slot layers.

    ``keys[k - 1]`` names the prefix of length ``k``: two candidates whose keys agree there compute
    the same hidden states after their first ``k`` slots. Keys must be hashable and, so that
    sorting groups a trie's branches, mutually comparable. ``build(layers, positions)`` returns
    the shell model running ``layers`` in place of its layer list, where ``positions[j]`` is the
    path index (0-based) that ``layers[j]`` stands for (it decides per-layer config such as the
    attention type).
    """

    keys: tuple[Hashable, ...]
    slots: tuple[nn.Module, ...]
    build: Callable[[list[nn.Module], list[int]], nn.Module]

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.slots) or not self.slots:
            raise ValueError(f"PathModel: {len(self.keys)} keys for {len(self.slots)} slots")


def state_bytes(state: Any) -> int:
    """Bytes held by a layer output (a tensor, or a tuple/list holding tensors)."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, tuple | list):
        return sum(state_bytes(s) for s in state)
    return 0


@dataclass
class PrefixStats:
    """What prefix sharing has saved: slot forwards run and skipped, LRU hits."""

    slots_run: int = 0  # slot forwards computed
    slots_reused: int = 0  # slot forwards skipped because their prefix state was known
    lru_hits: int = 0  # candidate-batches that started from a state kept by an earlier call
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        """Fraction of the slot forwards the candidates needed that were reused."""
        total = self.slots_run + self.slots_reused
        return self.slots_reused / total if total else 0.0


class PrefixCache(ByteLRU):
    """Prefix hidden states kept across calls: an LRU bounded by ``max_bytes`` (0 keeps none),
    each state counted by ``state_bytes``; evictions are counted in ``stats`` too."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(max_bytes, what="prefix cache")
        self.stats = PrefixStats()

    def put(self, key: StateKey, state: Any, size: int | None = None) -> bool:
        """Keep ``state`` (``size``: its ``state_bytes`` unless given), evicting the least recent
        states until the bound holds; False where it alone exceeds the bound."""
        before = self.evictions
        kept = super().put(key, state, state_bytes(state) if size is None else size)
        self.stats.evictions += self.evictions - before
        return kept


def batch_scope(inputs: torch.Tensor, mask: torch.Tensor, settings: Hashable) -> str:
    """A digest naming one example batch under one set of forward settings."""
    h = hashlib.sha256(repr(settings).encode())
    for t in (inputs, mask):
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class Replay(nn.Module):
    """Stands in for a path's first slots: returns their recorded output, whatever it is given."""

    def __init__(self, state: Any, stands_for: nn.Module) -> None:
        super().__init__()
        self.state = state
        self.stands_for = stands_for
        self.training = False  # like the eval-mode layers around it

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The recorded hidden states after the replaced prefix."""
        return self.state

    def __getattr__(self, name: str) -> Any:
        # transformers reads per-layer attributes (e.g. attention_type) off the layer list
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("stands_for"), name)


class Tap(nn.Module):
    """A slot layer whose output is handed to ``sink(position, output)`` as it is computed."""

    def __init__(self, slot: nn.Module, position: int, sink: Callable[[int, Any], None]) -> None:
        super().__init__()
        self.slot = slot
        self.position = position
        self._sink = sink
        self.training = False

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The slot's own output, recorded on the way."""
        out = self.slot(*args, **kwargs)
        self._sink(self.position, out)
        return out

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("slot"), name)


@dataclass
class PrefixRun:
    """One example batch scored over many candidates, each distinct prefix computed once.

    Call ``model_for`` for the candidates in ``trie_order``, run the returned model's forward, then
    ``finish`` the candidate before the next one.
    """

    paths: Sequence[PathModel]
    cache: PrefixCache
    scope: Hashable
    _wanted: Counter = field(init=False)  # candidates still to start from each branch point
    # id(path) -> the branch point it starts at, and that point's depth
    _starts: dict[int, tuple[Hashable, int]] = field(init=False)
    _pinned: dict[Hashable, Any] = field(init=False, default_factory=dict)
    _recorded: dict[int, Any] = field(init=False, default_factory=dict)
    _current: PathModel | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._wanted, self._starts = Counter(), {}
        order = self.trie_order(self.paths)
        for a, b in zip(order, order[1:]):
            before, path = self.paths[a].keys, self.paths[b].keys
            depth = next((k for k, (x, y) in enumerate(zip(before, path)) if x != y),
                         min(len(before), len(path)))  # fmt: skip
            if depth:
                self._wanted[path[depth - 1]] += 1
                self._starts[id(self.paths[b])] = (path[depth - 1], depth)

    @property
    def pinned(self) -> int:
        """How many states are pinned now (branch points whose candidates have not all run)."""
        return len(self._pinned)

    @staticmethod
    def trie_order(paths: Sequence[PathModel]) -> list[int]:
        """Candidate indices in depth-first trie order (candidates sharing a prefix adjacent)."""
        return sorted(range(len(paths)), key=lambda i: paths[i].keys)

    def _known(self, key: Hashable) -> Any | None:
        state = self._pinned.get(key)
        return state if state is not None else self.cache.get((self.scope, key))

    def model_for(self, path: PathModel) -> nn.Module:
        """The candidate's model, starting from its deepest known prefix state."""
        start, state = 0, None
        for k in range(len(path.keys), 0, -1):
            state = self._known(path.keys[k - 1])
            if state is not None:
                start = k
                if path.keys[k - 1] not in self._pinned:
                    self.cache.stats.lru_hits += 1
                break
        self.cache.stats.slots_reused += start
        self.cache.stats.slots_run += len(path.slots) - start
        if id(path) in self._starts:
            self._release(*self._starts[id(path)], len(path.keys))
        self._current, self._recorded = path, {}
        sink = self._recorded.__setitem__
        layers: list[nn.Module] = [
            Tap(path.slots[j], j, sink) for j in range(start, len(path.slots))
        ]
        positions = list(range(start, len(path.slots)))
        if start:
            layers.insert(0, Replay(state, path.slots[start - 1]))
            positions.insert(0, start - 1)
        return path.build(layers, positions)

    def _release(self, key: Hashable, depth: int, length: int) -> None:
        """A candidate of ``length`` slots starting at branch point ``key`` (``depth`` slots)
        has started: unpin the point once no later candidate starts there (into the LRU,
        unless it is that candidate's whole path)."""
        self._wanted[key] -= 1
        if self._wanted[key] == 0 and key in self._pinned:
            state = self._pinned.pop(key)
            if depth < length:
                self.cache.put((self.scope, key), state)

    def finish(self) -> None:
        """Keep the states the candidate's forward recorded: pinned where a later candidate of
        this batch starts, in the LRU otherwise.

        States go to the LRU deepest first, so that the shallow ones, which more candidates
        share, are the most recent and the last evicted. The full path's own state is kept only
        for a later candidate of this batch with the same path: across calls the evaluation
        cache already answers for a recipe scored before.
        """
        path = self._current
        if path is None:
            return
        full = len(path.keys) - 1
        for j in sorted(self._recorded, reverse=True):
            key, state = path.keys[j], self._recorded[j]
            if self._wanted[key] > 0:  # a later candidate of this batch starts from here
                self._pinned[key] = state
            elif j < full:
                self.cache.put((self.scope, key), state)
        self._current, self._recorded = None, {}
