"""Score many recipes at once on a Ray actor pool: one actor per device, the pool resident on it.

``RayBackend`` plugs into ``MergeProblem.backend`` (the seam in merge_env/search/problem.py): the problem
hands it a batch of *uncached* recipes, the backend spreads them over its actors and returns one
``{task: TaskScore}`` per recipe, in order. The batch travels in units cut along its prefix trie
(scoring/routing.py): candidates sharing their merge and first slots go to the same actor, which
scores its unit in one call with prefix sharing (``ModelPool.score_recipes``), so each shared
prefix runs once there; a merge goes back to the actor that last scored it where possible, so
that actor's merged-model and prefix LRUs serve it again. The driver stays the single writer of the evaluation
cache, the ledger and the archive, so an actor that dies loses nothing: the backend replaces it
and re-sends the recipe it held; the score is written once, by the driver, whatever the retries.

Each actor builds its own ``ModelPool`` (every source checkpoint loaded once, on its device: the
GPU Ray assigned it when ``num_gpus_per_worker > 0``) and an ``Evaluator`` per evaluator setting
it is asked for (batch size, example cap, autocast dtype, taken from the driver's evaluator on
every call, so the cheap and the full evaluator both work). Before the first batch of a setting
the backend checks that the actors' cache keys equal the driver's, so a cached score always means
what its key says. Recipes travel as canonical dicts; tasks travel once, at actor start.

Ray is an optional extra (``pip install mergegym[ray]``); it is imported only here, on use.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from merge_env.errors import ConfigError, MergeGymError
from merge_env.scoring.evaluate import Evaluator, TaskScore
from merge_env.scoring.prefix import PrefixCache, PrefixStats
from merge_env.scoring.routing import RouteKey, route
from merge_env.scoring.tasks.task import Task
from merge_env.search.recipe import Recipe

log = logging.getLogger(__name__)

# (batch_size, max_examples, autocast dtype name, prefix cache bytes, prompt prefix): everything
# an Evaluator's results depend on, and its prefix sharing (which leaves them bit for bit the same)
Settings = tuple[int, int | None, str | None, int, bool]
HOMES = 4096  # merges whose last actor the backend remembers


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "evaluator.backend=ray needs Ray: pip install 'mergegym[ray]' (or 'ray>=2.9')"
        ) from None
    return ray


def settings_of(evaluator: Evaluator) -> Settings:
    """The evaluator settings a worker must copy for its scores to match the driver's keys."""
    dtype = None if evaluator.dtype is None else str(evaluator.dtype).removeprefix("torch.")
    prefix = 0 if evaluator.prefix_cache is None else evaluator.prefix_cache.max_bytes
    return (evaluator.batch_size, evaluator.max_examples, dtype, prefix, evaluator.prompt_prefix)


def route_key(recipe: Recipe, num_layers: int) -> RouteKey:
    """A recipe's place in the prefix trie: (merge, shell), then its path slot by slot."""
    merge = "" if recipe.merge is None else Recipe(merge=recipe.merge).canonical_json()
    slots = ((s.source, s.layer, float(s.scale)) for s in recipe.resolved_path(num_layers))
    return ((merge, recipe.shell_source), *slots)


def ray_init(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    runtime_env: Mapping[str, Any] | None = None,
) -> bool:
    """Start Ray on this machine (``address=None``) or join a cluster; True if this call started it.

    ``address`` is anything ``ray.init`` takes: ``"auto"`` (the cluster this node belongs to),
    ``"ray://head:10001"`` (Ray Client), ``"head:6379"``. An already initialised Ray is reused.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"runtime_env": dict(runtime_env) if runtime_env else None}
    if address is None:
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    elif num_cpus is not None or num_gpus is not None:
        raise ConfigError("evaluator: num_cpus/num_gpus are for a local Ray, not address=...")
    ray.init(address=address, **kwargs)
    log.info("ray: %s, resources %s", address or "local", ray.cluster_resources())
    return True


class ScoringWorker:
    """What runs inside one Ray actor: the pool on this actor's device, and its evaluators."""

    def __init__(
        self,
        sources: Mapping[str, str],
        tasks: Sequence[Task],
        tokenizer_dir: str,
        device: str,
        dtype: torch.dtype,
        merged_cache_size: int,
        threads: int,
    ) -> None:
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from merge_env.search.assemble import ModelPool

        # Ray sets OMP_NUM_THREADS from num_cpus, but torch may have read it before; be explicit
        torch.set_num_threads(threads)
        hf_logging.disable_progress_bar()  # Ray forwards every actor's "Loading weights" bars
        self.device = device
        self.tasks = list(tasks)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        self.pool = ModelPool(
            sources, device=device, dtype=dtype, merged_cache_size=merged_cache_size
        )
        self._evaluators: dict[Settings, Evaluator] = {}
        # one prefix LRU per size (the full and the cheap evaluator share it, as on the driver)
        self._prefix: dict[int, PrefixCache] = {}

    def _evaluator(self, settings: Settings) -> Evaluator:
        if settings not in self._evaluators:
            batch_size, max_examples, dtype, prefix_bytes, prompt_prefix = settings
            prefix = self._prefix.setdefault(prefix_bytes, PrefixCache(prefix_bytes))
            self._evaluators[settings] = Evaluator(
                self.tokenizer, device=self.device, batch_size=batch_size,
                max_examples=max_examples, cache=None,
                dtype=None if dtype is None else getattr(torch, dtype), prefix_cache_bytes=0,
                prefix_cache=prefix if prefix_bytes > 0 else None, prompt_prefix=prompt_prefix,
            )  # fmt: skip
        return self._evaluators[settings]

    def probe(self, settings: Settings, split: str) -> dict[str, Any]:
        """This worker's pool fingerprint and depth, device, pid and cache key per task."""
        ev = self._evaluator(settings)
        keys = {t.name: ev.cache_key("probe", t, split) for t in self.tasks}
        return {"fingerprint": self.pool.fingerprint, "num_layers": self.pool.num_layers,
                "device": self.device, "pid": os.getpid(), "keys": keys}  # fmt: skip

    def score_many(
        self, recipes: Sequence[Mapping[str, Any]], settings: Settings, split: str
    ) -> list[dict[str, TaskScore]]:
        """Score a unit of recipes on every task, uncached, each shared path prefix once."""
        unit = [Recipe.from_dict(dict(r)) for r in recipes]
        return self.pool.score_recipes(unit, self._evaluator(settings), self.tasks, split)

    def prefix_stats(self) -> PrefixStats:
        """What prefix sharing saved on this worker, over all its prefix LRUs."""
        total = PrefixStats()
        for cache in self._prefix.values():
            for name in ("slots_run", "slots_reused", "lru_hits", "evictions"):
                setattr(total, name, getattr(total, name) + getattr(cache.stats, name))
        return total


class RayBackend:
    """A ``MergeProblem.backend`` that scores a batch of recipes on a pool of Ray actors."""

    def __init__(
        self,
        sources: Mapping[str, str | Path],
        tasks: Sequence[Task],
        tokenizer_dir: str | Path,
        *,
        num_workers: int = 1,
        num_gpus_per_worker: float = 0.0,
        num_cpus_per_worker: float = 1.0,
        address: str | None = None,
        device: str | None = None,
        dtype: torch.dtype = torch.float32,
        merged_cache_size: int = 4,
        max_resends: int = 3,
        start_timeout_s: float = 600.0,
        runtime_env: Mapping[str, Any] | None = None,
        num_cpus: int | None = None,
    ) -> None:
        if num_workers < 1:
            raise ConfigError(f"evaluator.num_workers must be >= 1, got {num_workers}")
        if num_gpus_per_worker < 0 or num_cpus_per_worker <= 0:
            raise ConfigError(
                f"evaluator: need num_gpus_per_worker >= 0 and num_cpus_per_worker > 0, got "
                f"{num_gpus_per_worker} and {num_cpus_per_worker}"
            )
        if max_resends < 0:
            raise ConfigError(f"evaluator.max_resends must be >= 0, got {max_resends}")
        self._ray = _import_ray()
        self.num_workers = int(num_workers)
        self.max_resends = int(max_resends)
        self.device = device or ("cuda" if num_gpus_per_worker > 0 else "cpu")
        # the scorer does not use a task's generation scorer, which may not pickle (a lambda)
        self.tasks = [dataclasses.replace(t, scorer=None) for t in tasks]
        self._worker_args = (
            {name: str(p) for name, p in sources.items()}, self.tasks, str(tokenizer_dir),
            self.device, dtype, int(merged_cache_size), max(1, int(num_cpus_per_worker)),
        )  # fmt: skip
        self._options = {"num_cpus": num_cpus_per_worker, "num_gpus": num_gpus_per_worker}
        self._owns_ray = ray_init(address, num_cpus=num_cpus, runtime_env=runtime_env)
        self._actor_class = self._ray.remote(ScoringWorker)
        self._checked: set[tuple[Settings, str]] = set()
        self.restarts = 0  # actors replaced after dying
        self.resent = 0  # recipes sent again because their actor died
        self.scored = 0
        self.units = 0  # units sent (a unit: recipes sharing a merge and a prefix)
        self._home: collections.OrderedDict[Any, int] = collections.OrderedDict()  # merge -> slot
        self.num_layers = 0  # the pool's depth, as the actors report it
        self.workers = [self._spawn() for _ in range(self.num_workers)]
        self.fingerprint = self._wait_ready(start_timeout_s)

    # -- actors ------------------------------------------------------------------------------
    def _spawn(self) -> Any:
        return self._actor_class.options(**self._options).remote(*self._worker_args)

    def _wait_ready(self, timeout: float) -> str:
        """Wait for every actor's pool; return their common fingerprint, or raise ConfigError."""
        ray = self._ray
        need = {k: v * self.num_workers for k, v in (("CPU", self._options["num_cpus"]),
                                                      ("GPU", self._options["num_gpus"])) if v}  # fmt: skip
        have = ray.cluster_resources()
        short = {k: v for k, v in need.items() if have.get(k, 0.0) < v}
        if short and self._owns_ray:  # a Ray started here will never grow
            self.close()
            raise ConfigError(
                f"evaluator: {self.num_workers} workers need {need}, this machine has "
                f"{ {k: have.get(k, 0.0) for k in need} }; lower num_workers or *_per_worker"
            )
        if short:  # an autoscaling cluster may still add nodes, so wait before giving up
            log.warning("ray: %d workers need %s, the cluster has %s now", self.num_workers,
                        need, {k: have.get(k, 0.0) for k in need})  # fmt: skip
        refs = [w.probe.remote((1, 1, None, 0, False), "search") for w in self.workers]
        done, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        if pending:
            self.close()
            raise ConfigError(
                f"evaluator: {len(pending)} of {self.num_workers} Ray workers did not start in "
                f"{timeout:.0f} s; they need {self._options} each and the cluster has {have}"
            )
        try:
            infos = ray.get(refs)
        except ray.exceptions.RayError as err:
            self.close()
            raise ConfigError(f"evaluator: a Ray worker failed to start: {err}") from None
        prints = {i["fingerprint"] for i in infos}
        if len(prints) != 1:
            self.close()
            raise ConfigError(f"evaluator: Ray workers see different checkpoints ({prints}); "
                              "the pool paths must hold the same files on every node")  # fmt: skip
        log.info("ray: %d workers ready on %s", self.num_workers,
                 sorted({i["device"] for i in infos}))  # fmt: skip
        self.num_layers = int(infos[0]["num_layers"])
        return prints.pop()

    def _replace(self, slot: int, err: BaseException) -> None:
        """Kill what is left of the actor in ``slot`` and start a fresh one there."""
        try:
            self._ray.kill(self.workers[slot], no_restart=True)
        except Exception:  # noqa: BLE001 - it is gone already, which is what we want
            pass
        log.warning("ray: worker %d died (%s); starting a new one", slot,
                    str(err).splitlines()[0] if str(err) else type(err).__name__)  # fmt: skip
        self.workers[slot] = self._spawn()
        self.restarts += 1

    def _check_keys(self, evaluator: Evaluator, settings: Settings, split: str) -> None:
        """Raise ConfigError unless the workers' cache keys equal the driver evaluator's."""
        if (settings, split) in self._checked:
            return
        for attempt in range(self.max_resends + 1):
            try:
                info = self._ray.get(self.workers[0].probe.remote(settings, split))
                break
            except self._ray.exceptions.RayActorError as err:
                if attempt == self.max_resends:
                    raise MergeGymError(f"evaluator: Ray worker 0 keeps dying ({err})") from None
                self._replace(0, err)
        ours = {t.name: evaluator.cache_key("probe", t, split) for t in self.tasks}
        if info["keys"] != ours:
            raise ConfigError(
                "evaluator: the Ray workers' cache keys differ from the driver's (tokenizer, "
                f"dtype or tasks differ); settings {settings}, split {split!r}"
            )
        self._checked.add((settings, split))

    def _submit(
        self, slot: int, unit: Sequence[Mapping[str, Any]], settings: Settings, split: str
    ) -> Any:
        """Send a unit of recipes to the actor in ``slot``; returns the results' ObjectRef."""
        return self.workers[slot].score_many.remote(unit, settings, split)

    def _pick(self, queue: collections.deque, slot: int, merges: Sequence[Any]) -> int:
        """Take from ``queue`` the unit to send to ``slot``: one of a merge this actor scored
        last, else one of a merge no actor has yet, else the first in line."""
        for want in (lambda u: self._home.get(merges[u]) == slot,
                     lambda u: merges[u] not in self._home):  # fmt: skip
            for u in queue:
                if want(u):
                    queue.remove(u)
                    return u
        return queue.popleft()

    def _settle(self, merge: Any, slot: int) -> None:
        """Remember that ``slot`` holds ``merge`` now (its merged model and prefix states)."""
        self._home[merge] = slot
        self._home.move_to_end(merge)
        while len(self._home) > HOMES:
            self._home.popitem(last=False)

    # -- the backend -------------------------------------------------------------------------
    def __call__(
        self, recipes: Sequence[Recipe], evaluator: Evaluator, split: str
    ) -> list[dict[str, TaskScore]]:
        """Score ``recipes`` on the actors, one unit in flight per actor; results in input order."""
        if not recipes:
            return []
        ray = self._ray
        settings = settings_of(evaluator)
        self._check_keys(evaluator, settings, split)
        keys = [route_key(r, self.num_layers) for r in recipes]
        units = route(keys, self.num_workers)
        merges = [keys[unit[0]][0] for unit in units]
        payload = [r.to_dict() for r in recipes]
        queue = collections.deque(range(len(units)))
        results: list[dict[str, TaskScore] | None] = [None] * len(recipes)
        tries = [0] * len(units)
        idle = list(range(self.num_workers))
        in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (slot, unit index)
        while queue or in_flight:
            while queue and idle:
                slot = idle.pop(0)
                u = self._pick(queue, slot, merges)
                sent = [payload[i] for i in units[u]]
                in_flight[self._submit(slot, sent, settings, split)] = (slot, u)
                self._settle(merges[u], slot)
                self.units += 1
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, u = in_flight.pop(ref)
            try:
                for i, scores in zip(units[u], ray.get(ref)):
                    results[i] = scores
            except ray.exceptions.RayActorError as err:
                tries[u] += 1
                if tries[u] > self.max_resends:
                    self._drain(in_flight)
                    more = f" (and {len(units[u]) - 1} more)" if len(units[u]) > 1 else ""
                    raise MergeGymError(
                        f"recipe {recipes[units[u][0]].hash}{more}: the Ray worker scoring it "
                        f"died {tries[u]} time(s) (max_resends={self.max_resends}); last error: "
                        f"{err}"
                    ) from None
                self._replace(slot, err)
                self.resent += len(units[u])
                queue.appendleft(u)  # first in line again, so the order of work is kept
            except ray.exceptions.RayTaskError as err:
                self._drain(in_flight)
                cause = getattr(err, "cause", None)
                if isinstance(cause, MergeGymError):
                    raise cause from None  # our own error, with its message, not Ray's traceback
                raise
            idle.append(slot)
        self.scored += len(recipes)
        return results  # type: ignore[return-value]

    def prefix_stats(self) -> list[PrefixStats]:
        """Each actor's prefix-sharing counters (slot forwards run and reused, LRU hits)."""
        return self._ray.get([w.prefix_stats.remote() for w in self.workers])

    def _drain(self, in_flight: Mapping[Any, tuple[int, int]]) -> None:
        """Let work already sent finish, so that the actors are idle for the next batch."""
        if in_flight:
            self._ray.wait(list(in_flight), num_returns=len(in_flight))

    def close(self) -> None:
        """Stop the actors, and Ray itself if this backend started it."""
        for w in getattr(self, "workers", []):
            try:
                self._ray.kill(w, no_restart=True)
            except Exception:  # noqa: BLE001 - closing twice, or the actor is gone
                pass
        self.workers = []
        if self._owns_ray and self._ray.is_initialized():
            self._ray.shutdown()
        self._owns_ray = False

    def __enter__(self) -> RayBackend:
        """Use as a context manager; closes on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the backend."""
        self.close()


def attach_ray(problem: Any, tokenizer_dir: str | Path, **options: Any) -> RayBackend:
    """Build a RayBackend over ``problem``'s pool and tasks, check it, and install it as its backend.

    ``options`` are RayBackend's keywords; the pool's dtype is the default. Raises ConfigError if
    the workers' checkpoints differ from the driver's (the cache keys would lie).
    """
    options.setdefault("dtype", problem.pool.dtype)
    backend = RayBackend(problem.pool.paths, problem.tasks, tokenizer_dir, **options)
    if backend.fingerprint != problem.pool.fingerprint:
        backend.close()
        raise ConfigError(
            f"evaluator: the Ray workers' pool {backend.fingerprint} differs from the driver's "
            f"{problem.pool.fingerprint}; paths {dict(problem.pool.paths)} must hold the same "
            "checkpoints on every node"
        )
    problem.backend = backend
    return backend


BACKENDS = ("local", "ray")
# evaluator config keys that RayBackend takes (the rest configure the Evaluator itself)
RAY_OPTIONS = ("num_workers", "num_gpus_per_worker", "num_cpus_per_worker", "address",
               "runtime_env", "max_resends")  # fmt: skip


def use_backend(
    problem: Any, tokenizer_dir: str | Path, backend: str = "local", **options: Any
) -> RayBackend | None:
    """Install the named scoring back-end on ``problem``; returns the RayBackend (to close) or None."""
    if backend == "local":
        return None  # MergeProblem's own local_backend
    if backend == "ray":
        return attach_ray(problem, tokenizer_dir, **options)
    raise ConfigError(f"evaluator.backend must be one of {BACKENDS}, got {backend!r}")
