"""Check a composed run config before any work starts: every key known, every value typed.

Hydra already refuses an override of a key that does not exist; this catches the rest — a key
added with ``+``, a value of the wrong type, a missing ``???``, a setting outside its choices or
range (``env.scalarisation=foo``, ``env.lattice_steps=0``, ``device=tpu``) — against the
signature of the callable each group instantiates and the choices the library declares, and
names the key in one ConfigError, before any model is loaded.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from merge_env.errors import ConfigError

TARGET_GROUPS = ("pool", "tasks", "agent", "logger")
EVALUATOR_KEYS = {
    "batch_size": int, "max_examples": (int, type(None)), "cheap_examples": (int, type(None)),
    "metric": (str, type(None)), "prefix_cache_bytes": int, "prompt_prefix": bool,
    "merged_cache_bytes": (int, type(None)),
    # evaluator=ray (merge_env/scoring/parallel.py)
    "backend": str, "num_workers": int, "num_gpus_per_worker": (int, float),
    "num_cpus_per_worker": (int, float), "address": (str, type(None)),
    "runtime_env": (dict, type(None)), "max_resends": int,
}  # fmt: skip
TOP_LEVEL = {
    "seed": int, "budget": (int, float), "device": str, "preference": (list, type(None)),
    "n_report_preferences": int, "reference_grid": bool, "resume": bool, "run_name": str,
    "run_dir": (str, type(None)),
}  # fmt: skip


def _plain(node: Any, key: str) -> Any:
    try:
        return (
            OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
            if isinstance(node, DictConfig | ListConfig)
            else node
        )
    except MissingMandatoryValue as exc:
        raise ConfigError(f"{key}: a required value is missing ({exc.full_key} = ???)") from None


def _check_type(value: Any, expected: Any, key: str) -> None:
    if not _matches(value, expected):
        name = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"{key}: expected {name}, got {value!r} ({type(value).__name__})")


def _matches(value: Any, expected: Any) -> bool:
    if expected is Any or expected is inspect.Parameter.empty:
        return True
    if isinstance(expected, tuple):
        return any(_matches(value, e) for e in expected)
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is not None:
        if origin in (list, tuple, Sequence, typing.Sequence) or origin is type(Sequence):
            return isinstance(value, list | tuple)
        if origin in (dict, Mapping):
            return isinstance(value, dict)
        return True
    if expected in (list, tuple) or expected is Sequence:
        return isinstance(value, list | tuple)
    if expected is dict or expected is Mapping:
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True  # string annotations we cannot resolve, protocols, ...


def _signature(target: Callable) -> tuple[dict[str, inspect.Parameter], bool, dict]:
    """Parameters of a callable; for a class whose __init__ forwards **kwargs, its bases' too."""
    fns = (
        [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    )
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    var_kw = False
    for fn in fns:
        if fn is object.__init__:
            break
        sig = inspect.signature(fn)
        try:
            hints = {**typing.get_type_hints(fn), **hints}
        except Exception:  # noqa: BLE001 - unresolvable forward refs: fall back to no types
            pass
        own = {n: p for n, p in sig.parameters.items() if n not in ("self", "cls")}
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.values())
        for n, p in own.items():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                params.setdefault(n, p)
        if not var_kw:
            break
    return params, var_kw, hints


def check_against(
    options: Mapping[str, Any], target: Callable, group: str, skip: Sequence[str] = ()
) -> None:
    """Every option is a parameter of ``target`` with a value of its annotated type."""
    params, var_kw, hints = _signature(target)
    known = [n for n in params if n not in skip]
    for key, value in options.items():
        if key.startswith("_") or key in skip:
            continue
        if key not in params:
            if var_kw:
                continue
            raise ConfigError(
                f"{group}.{key}: unknown option for {target.__module__}.{target.__qualname__}; "
                f"known: {', '.join(known)}"
            )
        _check_type(value, hints.get(key, Any), f"{group}.{key}")
    for name, p in params.items():
        if name in skip or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        if p.default is inspect.Parameter.empty and name not in options:
            raise ConfigError(f"{group}.{name}: required by {target.__qualname__} but not set")


def check_top_level(cfg: DictConfig, config_file: str | Path) -> None:
    """Every top-level key is declared in ``config_file`` (a key or a defaults group there):
    ``+key=value`` adds one that no code reads, so a misspelt setting would be silently ignored."""
    declared = OmegaConf.load(config_file)
    known = {str(k) for k in declared if k != "defaults"} | {"hydra"}
    for entry in declared.get("defaults", []):
        if isinstance(entry, DictConfig):
            known.update(str(k).split("@")[0] for k in entry if not str(k).startswith("override"))
    for key in cfg:
        if key not in known:
            raise ConfigError(
                f"{key}: not a setting of {Path(config_file).name} (added with +?); "
                f"known: {', '.join(sorted(known - {'hydra'}))}"
            )


def check_device(device: str, key: str = "device") -> None:
    """``device`` names a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(
            f"{key}: {device!r} is not a device; use cpu, cuda, cuda:N or mps"
        ) from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (parsed.index or 0) >= count:
            raise ConfigError(f"{key}: {device!r} but this machine has {count} CUDA device(s)")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: {device!r} but MPS is not available here")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"{key}: {device!r} is not supported; use cpu, cuda, cuda:N or mps")


def _choice(value: Any, choices: Sequence[Any], key: str) -> None:
    if value not in choices:
        shown = ", ".join("null" if c is None else str(c) for c in choices)
        raise ConfigError(f"{key}: {value!r} is not one of {shown}")


def _at_least(value: Any, low: float, key: str, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if value is None or value < low:
        raise ConfigError(f"{key}: must be >= {low}{' or null' if nullable else ''}, got {value!r}")


def check_env_settings(env: Mapping[str, Any]) -> None:
    """The recipe space's settings: choices MergeEnv declares, ranges it would only discover late."""
    from merge_env.env import MODES, PARAM_MODES, REWARDS, WEIGHTS
    from merge_env.merging.methods.registry import OPERATORS
    from merge_env.search.pareto import SCALARISATIONS
    from merge_env.search.recipe import check_weight_parts

    _choice(env.get("mode", "free"), MODES, "env.mode")
    _choice(env.get("param_mode", "policy"), PARAM_MODES, "env.param_mode")
    _choice(env.get("scalarisation", "tchebycheff"), SCALARISATIONS, "env.scalarisation")
    _choice(env.get("reward", "scalar"), REWARDS, "env.reward")
    _choice(env.get("weights", "lattice"), WEIGHTS, "env.weights")
    check_weight_parts(env.get("weight_parts"), "env.weight_parts")
    if env.get("weights") == "simplex" and env.get("param_mode") == "preference":
        raise ConfigError("env.weights: simplex needs env.param_mode=policy (with preference, "
                          "the preference fixes the weights)")  # fmt: skip
    method = env.get("merge_method", "dare_ties")
    _choice(method, sorted(OPERATORS), "env.merge_method")
    if OPERATORS[method].param("weight") is None:
        raise ConfigError(f"env.merge_method: {method!r} takes no per-model weight")
    _at_least(env.get("lattice_steps", 1), 1, "env.lattice_steps")
    _at_least(env.get("t_max"), 1, "env.t_max", nullable=True)
    _at_least(env.get("beta", 0.0), 0.0, "env.beta")
    density = env.get("density", 0.5)
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"env.density: must be in (0, 1], got {density!r}")
    coefficients = env.get("coefficients", [1.0])
    if 1.0 not in coefficients:
        raise ConfigError(f"env.coefficients: must contain 1.0, got {list(coefficients)}")


def check_evaluator_settings(evaluator: Mapping[str, Any]) -> None:
    """Scoring settings: a metric tasks know, positive sizes."""
    from merge_env.scoring.tasks.task import METRICS

    _choice(evaluator.get("metric"), (None, *METRICS), "evaluator.metric")
    _at_least(evaluator.get("batch_size", 1), 1, "evaluator.batch_size")
    for key in ("max_examples", "cheap_examples"):
        _at_least(evaluator.get(key), 1, f"evaluator.{key}", nullable=True)
    _at_least(evaluator.get("prefix_cache_bytes", 0), 0, "evaluator.prefix_cache_bytes")
    _at_least(evaluator.get("merged_cache_bytes"), 0, "evaluator.merged_cache_bytes", nullable=True)


def validate_run_config(cfg: DictConfig) -> None:
    """Raise one ConfigError naming the first wrong key of a composed run config."""
    for key, expected in TOP_LEVEL.items():
        if key in cfg:
            _check_type(_plain(cfg[key], key), expected, key)
    if cfg.budget <= 0:
        raise ConfigError(f"budget: must be positive, got {cfg.budget}")
    for group in TARGET_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        options = _plain(node, group)
        target_name = options.get("_target_")
        if not target_name:
            raise ConfigError(f"{group}: no _target_ (choose a config from conf/{group}/)")
        try:
            target = get_object(target_name)
        except Exception as exc:  # noqa: BLE001 - hydra wraps import errors variously
            raise ConfigError(f"{group}._target_: cannot import {target_name!r} ({exc})") from None
        check_against(options, target, group)
    env = _plain(cfg.env, "env")
    from merge_env.env import MergeEnv

    check_against(env, MergeEnv, "env", skip=("problem", "zoo", "fixed_merge", "preference"))
    check_env_settings(env)
    evaluator = _plain(cfg.evaluator, "evaluator")
    for key, value in evaluator.items():
        if key.startswith("_"):
            continue
        if key not in EVALUATOR_KEYS:
            raise ConfigError(
                f"evaluator.{key}: unknown option; known: {', '.join(EVALUATOR_KEYS)}"
            )
        _check_type(value, EVALUATOR_KEYS[key], f"evaluator.{key}")
    check_evaluator_settings(evaluator)
    if "device" in cfg:
        check_device(cfg.device)
