"""Pool specifications: where a problem's models, tasks and tokenizer come from.

A PoolSpec is plain data (names -> checkpoint folders, optional tasks, a tokenizer folder), so
the Hydra ``pool/`` group only picks a factory here; the default zoo, a local set of HF folders
and the SmolLM2 pool are equal citizens.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from merge_env.errors import ConfigError
from merge_env.scoring.tasks.chat import chat_task
from merge_env.scoring.tasks.task import Task
from merge_env.search.problem import MergeProblem, build_problem
from merge_env.search.recipe import BASE


@dataclass(frozen=True)
class PoolSpec:
    """Named checkpoint folders (``base`` + fine-tunes), their tasks (if any), a tokenizer."""

    name: str
    sources: Mapping[str, Path]
    tokenizer_dir: Path
    tasks: Sequence[Task] = field(default_factory=tuple)
    extra: Mapping[str, object] = field(default_factory=dict)  # e.g. the zoo's recycling pool
    # a chat model: configured task sets are rendered through the tokenizer's chat template
    # (with ``system`` as the system prompt) before scoring; the pool's own tasks already are
    chat_template: bool = False
    system: str | None = None

    def __post_init__(self) -> None:
        if BASE not in self.sources:
            raise ConfigError(f"pool {self.name!r}: needs a source named 'base'")
        for name, path in self.sources.items():
            if not (Path(path) / "config.json").is_file():
                raise ConfigError(f"pool {self.name!r}: source {name!r}: {path} has no config.json")


class _ZooExtras(Mapping[str, object]):
    """A zoo pool's ``extra``: its recycling checkpoints, odd expert and that expert's task, the
    extras trained on first access (a search never touches them, so it never waits for them)."""

    KEYS = ("recycling", "odd_expert", "odd_expert_task")

    def __init__(self, config: Any, cache_dir: str | None, shipped: bool = True) -> None:
        self._config, self._cache_dir, self._shipped = config, cache_dir, shipped
        self._values: dict[str, object] | None = None

    def __getitem__(self, key: str) -> object:
        if key not in self.KEYS:
            raise KeyError(key)
        if self._values is None:
            from merge_env.pools.zoo import build_zoo

            zoo = build_zoo(self._config, self._cache_dir, extras=True, shipped=self._shipped)
            self._values = {"recycling": list(zoo.recycling), "odd_expert": zoo.odd_expert,
                            "odd_expert_task": zoo.odd_expert_task}  # fmt: skip
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)

    def __eq__(self, other: object) -> bool:  # equal zoos, without building either's extras
        if not isinstance(other, _ZooExtras):
            return NotImplemented
        return (self._config, self._cache_dir, self._shipped) == (
            other._config, other._cache_dir, other._shipped
        )  # fmt: skip

    __hash__ = None  # type: ignore[assignment]


def zoo_pool_config(
    preset: str = "default",
    seed: int = 0,
    tasks: Sequence[str] | None = None,
    loss_on: str = "answer",
) -> Any:
    """The ZooConfig a zoo pool config names: the preset at ``seed``, with its task kinds
    replaced (``tasks``, by position; the odd-width expert's task must stay) and ``loss_on``."""
    import dataclasses

    from merge_env.pools.zoo import ZooConfig

    config = dataclasses.replace(ZooConfig.preset(preset), seed=seed, loss_on=loss_on)
    if tasks is None:
        return config
    if isinstance(tasks, str):
        raise ConfigError(f"pool.tasks: a list of zoo task kinds, got the string {tasks!r}")
    tasks = tuple(tasks)
    if config.odd_task not in tasks:
        raise ConfigError(
            f"pool.tasks: {list(tasks)} must keep {config.odd_task!r}, the task of the "
            f"preset's odd-width expert"
        )
    return dataclasses.replace(config, tasks=tasks)


def zoo_pool(
    preset: str = "default",
    seed: int = 0,
    cache_dir: str | None = None,
    shipped: bool = True,
    tasks: Sequence[str] | None = None,
    loss_on: str = "answer",
) -> PoolSpec:
    """The project's own zoo (built and cached on first use): base + one expert per task; its
    recycling pool and odd expert (``extra``) are trained when first asked for. ``shipped``: a
    zoo that ships with MergeGym (the default preset's seed 0) is installed, not trained.
    ``tasks``: the zoo's task kinds in place of the preset's, e.g. ``[add, atbash, cipher]``: as
    many, and by position, since the preset's per-task settings (the base's mixture and rare
    mass, the experts' steps, the recycling mixtures) are lists aligned with its tasks; the
    preset's odd-width expert's task (cipher) must stay. ``loss_on``: "answer" (the presets') or
    "text": every model trained with the loss on the whole sequence, prompt included (another
    zoo, with its own fingerprint; none ships)."""
    from merge_env.pools.zoo import build_zoo

    config = zoo_pool_config(preset, seed, tasks, loss_on)
    zoo = build_zoo(config, cache_dir, shipped=shipped)
    name = f"zoo-{preset}" + ("" if tasks is None else "-" + "-".join(config.tasks))
    return PoolSpec(
        name=name + ("" if loss_on == "answer" else f"-{loss_on}"),
        sources={BASE: zoo.base, **zoo.experts},
        tokenizer_dir=zoo.tokenizer_dir,
        tasks=tuple(zoo.tasks),
        extra=_ZooExtras(config, cache_dir, shipped),
    )


def zoo_problem(preset: str = "default", *, seed: int = 0, **kwargs: Any) -> MergeProblem:
    """The MergeProblem over a zoo preset's base and experts (the zoo is built on first use);
    ``build_problem`` keyword arguments pass through."""
    pool = zoo_pool(preset, seed)
    return build_problem(pool.sources, pool.tasks, pool.tokenizer_dir, **kwargs)


def local_pool(
    base: str,
    experts: Mapping[str, str],
    tokenizer: str | None = None,
    name: str = "local",
    chat_template: bool = False,
    system: str | None = None,
) -> PoolSpec:
    """Any local HF causal-LM folders: a base and named fine-tunes of it; ``chat_template`` for
    chat models (task prompts rendered through the tokenizer's template, ``system`` prompt)."""
    if not experts:
        raise ConfigError("pool.experts: name at least one fine-tune (name: path)")
    sources = {
        BASE: Path(base).expanduser(),
        **{k: Path(v).expanduser() for k, v in experts.items()},
    }
    return PoolSpec(
        name=name, sources=sources, tokenizer_dir=Path(tokenizer or base).expanduser(),
        chat_template=chat_template, system=system,
    )  # fmt: skip


def tasks_or_pool(pool: PoolSpec, tasks: Sequence[Task] | None) -> list[Task]:
    """The tasks a run uses: the configured ones (through the pool's chat template if it has
    ``chat_template``), else the pool's own."""
    if not tasks:
        if not pool.tasks:
            raise ConfigError(f"pool {pool.name!r} brings no tasks: choose a tasks config")
        return list(pool.tasks)
    if not pool.chat_template:
        return list(tasks)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(pool.tokenizer_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"pool {pool.name!r}: chat_template is on but the tokenizer in {pool.tokenizer_dir} "
            "has no chat template"
        )
    return [chat_task(tokenizer, t, pool.system) for t in tasks]


def jsonl_tasks(
    files: Mapping[str, str], n_test: float = 0.5, seed: int = 0, metric: str = "exact_match"
) -> list[Task]:
    """Tasks from JSONL files ({"prompt", "answer"} per line), one per name."""
    from merge_env.scoring.tasks.jsonl import load_jsonl

    if not files:
        raise ConfigError("tasks.files: name at least one task (name: path.jsonl)")
    return [load_jsonl(path, name, n_test, seed, metric=metric) for name, path in files.items()]


def reasoning_gym_tasks(
    datasets: Sequence[str],
    n_search: int = 64,
    n_test: int = 128,
    seed: int = 0,
    metric: str = "exact_match",
) -> list[Task]:
    """Tasks from seeded reasoning-gym generators (easy settings), one per dataset name."""
    from merge_env.scoring.tasks.reasoning_gym import reasoning_gym_task

    if not datasets:
        raise ConfigError("tasks.datasets: name at least one reasoning-gym dataset")
    return [reasoning_gym_task(d, n_search, n_test, seed, metric=metric) for d in datasets]
