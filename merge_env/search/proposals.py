"""The framework's proposal distribution: candidate recipes any agent may screen before searching.

HM3's offline phase scores many candidate inference paths once, cheaply, and starts from the best
(DESIGN §1.1). Which candidates are proposed is a prior about good merges, so it is a service of
the framework rather than one agent's trick (DESIGN §3): PPO pre-trains on these candidates (its
offline phase), a genome agent seeds its first population with the best of them, each when its
``proposals`` setting (agents/base.py) is above zero. Every candidate is a path over one of a
MergeEnv's merges, so it is expressible as env actions (the policy can imitate it) and as a genome
(``agents/genome.py``'s codec) wherever the agent's space holds it: the env's lattice merges and each
pool model's layers alone, then paths that interleave layers of a merge and of the base (a few from
fine-tunes) with a few random edits: swap a slot's source, repeat or drop a layer, rescale a slot,
hand a run of layers to one source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from merge_env.search.recipe import BASE, MERGED, Recipe, Slot

if TYPE_CHECKING:
    from merge_env.env import MergeEnv

EDITS = ("swap", "repeat", "drop", "scale", "block")


@dataclass(frozen=True)
class Candidate:
    """A path over one of the env's merges; no slots = STOP at once (the plain parameter merge)."""

    merge: int | tuple[int, ...]  # a lattice index; per part and the rest with weight_parts
    slots: tuple[Slot, ...] = ()

    def recipe(self, env: MergeEnv) -> Recipe:
        """The recipe the env builds when it is fed this candidate's actions."""
        return Recipe(merge=env.merge_of(self.merge), path=self.slots or None)

    def length(self, env: MergeEnv) -> int:
        """Path length as the env's length penalty counts it (an empty path is the L-layer merge)."""
        return len(self.slots) if self.slots else env.L


def propose_candidates(
    env: MergeEnv, n: int, rng: np.random.Generator, mix: float = 0.3, expert_rate: float = 0.1
) -> list[Candidate]:
    """Up to ``n`` distinct candidates: the env's plain merges and single sources, then random
    interleavings (these are PPO's proposals, expressible as actions; the framework's anchors,
    which the env cannot express, are ``MergeProblem.anchor_recipes``).

    First: each merge's plain merge (STOP at once; the identity path in aligned mode; a seeded
    random ``n`` of them when there are more) and each pool model alone. Interleavings: the
    identity path over the merged model or the base (even odds), each slot handed to the other
    of the two with probability ``mix`` and to a random fine-tune with probability
    ``expert_rate``, then a few random edits (swap, repeat, drop, rescale, a run of layers to one
    source). Keeping some layers of the base inside a merge is the
    move that most often rescues a merge whose experts drifted apart (layer-wise / partial merging),
    and one random edit of the merged identity path alone rarely makes it twice.
    """
    merges: Sequence[int] = range(len(env.merges))
    if len(env.merges) > n:
        # more plain merges than proposals (924 in sixths over 7 recycled checkpoints against
        # 180; SmolLM2's 28 against 20): a seeded random subset in random order, not the
        # lattice's first corner, whose weights leave the last sources at zero and are the same
        # for every seed
        merges = [int(i) for i in rng.permutation(len(env.merges))[:n]]
    out: dict[str, Candidate] = {}
    for m in merges:
        cand = _identity(env, m) if env.mode == "aligned" else Candidate(m)
        out.setdefault(cand.recipe(env).hash, cand)
    for source in env.sources[1:]:
        out.setdefault(_identity(env, 0, source).recipe(env).hash, _identity(env, 0, source))
    anchors = [s for s in (MERGED, BASE) if s in env.sources]
    experts = [s for s in env.sources if s not in anchors]
    tries = 0
    while len(out) < n and tries < 20 * n:
        tries += 1
        m = int(rng.integers(len(env.merges)))
        back = anchors[int(rng.integers(len(anchors)))]
        slots = []
        for s in _identity(env, m, back).slots:
            u = rng.random()
            if u < expert_rate and experts:
                s = Slot(experts[int(rng.integers(len(experts)))], s.layer, s.scale)
            elif u < expert_rate + mix and len(anchors) > 1:
                s = Slot(anchors[1 - anchors.index(back)], s.layer, s.scale)
            slots.append(s)
        for _ in range(int(rng.geometric(0.5)) - 1):
            slots = _edit(env, slots, rng)
        cand = Candidate(m, tuple(slots))
        out.setdefault(cand.recipe(env).hash, cand)
    return list(out.values())[:n]


def _identity(env: MergeEnv, merge: int, source: str = MERGED) -> Candidate:
    return Candidate(merge, tuple(Slot(source, layer, 1.0) for layer in range(env.L)))


def _edit(env: MergeEnv, slots: list[Slot], rng: np.random.Generator) -> list[Slot]:
    """One random edit; aligned mode keeps depth and layer order, so it only swaps and rescales."""
    kinds = EDITS if env.mode == "free" else ("swap", "scale", "block")
    kind = kinds[int(rng.integers(len(kinds)))]
    i = int(rng.integers(len(slots)))
    s = slots[i]
    if kind == "swap":
        others = [x for x in env.sources if x != s.source]
        slots[i] = Slot(others[int(rng.integers(len(others)))], s.layer, s.scale)
    elif kind == "scale":
        others = [c for c in env.coefficients if c != s.scale]
        slots[i] = Slot(s.source, s.layer, others[int(rng.integers(len(others)))])
    elif kind == "repeat" and len(slots) < env.t_max:
        slots.insert(i + 1, s)
    elif kind == "drop" and len(slots) > 1:
        del slots[i]
    elif kind == "block":
        src = env.sources[int(rng.integers(len(env.sources)))]
        j = int(rng.integers(i, len(slots))) + 1
        slots[i:j] = [Slot(src, x.layer, x.scale) for x in slots[i:j]]
    return slots
