"""Comparison protocols: what every agent of a comparison shares, checked before any run.

A protocol (``conf/protocol/<name>.yaml``) fixes the search space (every env key), the budget, the
fidelities, whether anchors and screening are offered, the pool, its training seeds and the search
seeds (why a config group: experiments/compare_agents.py's docstring). This module loads and checks
protocols, composes each run's config under one, reads back the space a run searched, refuses
agents that searched different spaces, and records the git commit.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from experiments.config_check import validate_run_config
from merge_env.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"
PURPOSES = ("tuning", "reported", "smoke")
PROTOCOL_KEYS = {
    "name": str, "purpose": str, "tuned_on": (str, type(None)), "pool": str,
    "pool_settings": dict, "zoo_seeds": list, "search_seeds": list, "levels": list,
    "budget": (int, float), "fidelity": dict, "screening": bool, "anchors": bool, "env": dict,
    "proposals": int,
}  # fmt: skip
FIDELITY_KEYS = ("cheap_examples", "max_examples", "metric")
# genome agents name the env's ``mode`` ``encoding``; keys only some agents have count as their
# neutral value where missing (the env's merge lattice, no density genes)
AGENT_SPACE_NEUTRAL = {"weights": "lattice", "density_genes": False}
PASSED = ("anchors", "screening", "proposals")  # handed to every agent that has the key


def compose_config(overrides: Sequence[str], config_name: str = "config") -> DictConfig:
    """``conf/<config_name>.yaml`` composed with Hydra ``overrides`` (no Hydra app running)."""
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose(config_name=config_name, overrides=list(overrides))


# --- the protocol ---------------------------------------------------------------------------


def load_protocol(name: str, overrides: Sequence[str] = (), check_tuning: bool = True) -> dict:
    """The protocol ``conf/protocol/<name>.yaml`` with ``key=value`` overrides, checked; its
    ``overrides`` lists them. A reported protocol is checked against the one it was ``tuned_on``."""
    if not (CONF / "protocol" / f"{name}.yaml").is_file():
        options = sorted(p.stem for p in (CONF / "protocol").glob("*.yaml"))
        raise ConfigError(f"protocol: {name!r} unknown; expected one of {options}")
    prefixed = [re.sub(r"^(\+*)", r"\1protocol.", o) for o in overrides]  # ++key=v stays ++
    cfg = compose_config([f"+protocol={name}", *prefixed])
    protocol = OmegaConf.to_container(cfg.protocol, resolve=True)
    check_protocol(protocol)  # type: ignore[arg-type]
    protocol["overrides"] = list(overrides)  # type: ignore[index]
    if check_tuning and protocol["tuned_on"]:  # type: ignore[index]
        tuning = load_protocol(protocol["tuned_on"], check_tuning=False)  # type: ignore[index]
        check_untuned(protocol, tuning)  # type: ignore[arg-type]
    return protocol  # type: ignore[return-value]


def check_protocol(protocol: Mapping[str, Any]) -> None:
    """ConfigError naming the first protocol key that is missing, unknown or of the wrong type."""
    for key, kind in PROTOCOL_KEYS.items():
        if key not in protocol:
            raise ConfigError(f"protocol.{key}: missing")
        if not isinstance(protocol[key], kind) or isinstance(protocol[key], bool) != (kind is bool):
            raise ConfigError(f"protocol.{key}: wrong type, got {protocol[key]!r}")
    unknown = sorted(set(protocol) - set(PROTOCOL_KEYS) - {"overrides"})
    if unknown:
        raise ConfigError(f"protocol.{unknown[0]}: unknown key (known: {sorted(PROTOCOL_KEYS)})")
    if protocol["purpose"] not in PURPOSES:
        raise ConfigError(f"protocol.purpose: {protocol['purpose']!r} is not one of {PURPOSES}")
    for key in ("zoo_seeds", "search_seeds", "levels"):
        if not protocol[key] or len(set(protocol[key])) < len(protocol[key]):
            raise ConfigError(f"protocol.{key}: needs distinct values, got {protocol[key]}")
    for key in set(protocol["fidelity"]) - set(FIDELITY_KEYS):
        raise ConfigError(f"protocol.fidelity.{key}: unknown (known: {FIDELITY_KEYS})")
    env = compose_config([]).env
    for key in protocol["env"]:
        if key not in env:
            raise ConfigError(f"protocol.env.{key}: not a setting of the env group")


def check_untuned(protocol: Mapping[str, Any], tuning: Mapping[str, Any]) -> None:
    """ConfigError if a reported protocol reuses a zoo seed or search seed it was tuned on."""
    for key in ("zoo_seeds", "search_seeds"):
        shared = sorted(set(protocol[key]) & set(tuning[key]))
        if shared:
            raise ConfigError(
                f"protocol.{key}: {shared} also in protocol {tuning['name']!r}, which agents "
                f"were tuned on; protocol {protocol['name']!r} is reported, so it must not be"
            )


def protocol_diffs(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``protocol.<key>: old -> new`` for every key (its ``overrides`` list aside) that differs."""
    old = {k: v for k, v in old.items() if k != "overrides"}
    new = {k: v for k, v in new.items() if k != "overrides"}
    return [f"protocol.{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]  # fmt: skip


def run_config(
    protocol: Mapping[str, Any], agent: str, seed: int, zoo_seed: Any, level: str,
    overrides: Sequence[str] = (),
) -> tuple[DictConfig, dict[str, Any]]:  # fmt: skip
    """One run's config (``agent=<agent>`` under the protocol) and the switches handed to it:
    {"anchors": value or "unsupported", ...}."""
    run_name = f"compare__{agent}__{seed}"  # the default names Hydra's run, which is not running
    cfg = compose_config([f"agent={agent}", f"pool={protocol['pool']}", f"seed={seed}",
                    f"run_name={run_name}", *overrides])  # fmt: skip
    settings = {
        "budget": protocol["budget"], "agent.level": level,
        **{f"pool.{k}": v for k, v in protocol["pool_settings"].items()},
        **({"pool.seed": zoo_seed} if zoo_seed is not None else {}),
        **{f"env.{k}": v for k, v in protocol["env"].items()},
        **{f"evaluator.{k}": v for k, v in protocol["fidelity"].items()},
    }  # fmt: skip
    fixed = {*settings, *(f"agent.{k}" for k in PASSED)}
    for override in overrides:  # a run's own override may not be undone by the protocol
        key = override.split("=", 1)[0].lstrip("+~")
        if key in fixed:
            raise ConfigError(f"override {override!r}: protocol {protocol['name']!r} fixes {key} "
                              "for every agent of a comparison")  # fmt: skip
    for key, value in settings.items():
        if OmegaConf.select(cfg, key, default=_MISSING) is _MISSING:
            raise ConfigError(f"protocol {protocol['name']!r}: {key} is not a setting of "
                              f"pool={protocol['pool']}, agent={agent}")  # fmt: skip
        OmegaConf.update(cfg, key, value)
    passed = {}
    for key in PASSED:
        passed[key] = protocol[key] if key in cfg.agent else "unsupported"
        if key in cfg.agent:
            cfg.agent[key] = protocol[key]
    validate_run_config(cfg)
    return cfg, passed


_MISSING = object()


def comparison_settings(cfg: DictConfig) -> dict[str, Any]:
    """What must be equal for every agent of a comparison, as {dotted key: value}: the space the
    agent searched (each env key as the agent resolved it), the budget and the fidelities."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    agent = OmegaConf.to_container(cfg.agent, resolve=True)
    space = {k: agent.get(k, v) for k, v in env.items()}  # type: ignore[union-attr]
    if "mode" not in agent and "encoding" in agent:  # type: ignore[operator]
        space["mode"] = agent["encoding"]  # type: ignore[index]
    neutral = {k: agent.get(k, v) for k, v in AGENT_SPACE_NEUTRAL.items()}  # type: ignore[union-attr]
    return json.loads(json.dumps({
        **{f"env.{k}": v for k, v in space.items()},
        **{f"agent.{k}": v for k, v in neutral.items()}, "budget": cfg.budget,
        **{f"evaluator.{k}": cfg.evaluator.get(k) for k in FIDELITY_KEYS},
    }))  # fmt: skip


def check_one_space(runs: Sequence[Mapping[str, Any]]) -> None:
    """ConfigError naming every setting (space, budget, fidelity) on which the agents of one
    level differ; ``runs`` carry ``agent``, ``level`` and ``settings``."""
    diffs, many = [], len({r["level"] for r in runs}) > 1
    for level in sorted({r["level"] for r in runs}):
        group = [r for r in runs if r["level"] == level]
        for key in sorted(set().union(*(r.get("settings", {}) for r in group))):
            values: dict[str, list[str]] = {}
            for r in group:
                value = json.dumps(r.get("settings", {}).get(key, "(unset)"))
                if r["agent"] not in values.setdefault(value, []):
                    values[value].append(r["agent"])
            if len(values) > 1:
                shown = ", ".join(f"{'/'.join(agents)}={v}" for v, agents in values.items())
                diffs.append(f"{key}: {shown}" + (f" (level {level})" if many else ""))
    if diffs:
        raise ConfigError(
            "agents searched different spaces and cannot be compared: " + "; ".join(diffs)
        )


def git_commit(cwd: Path | None = None) -> dict[str, Any]:
    """{"sha": HEAD's commit, "dirty": tracked files changed} ("unknown", None outside git), as
    it was when this process first asked: the code a long comparison runs is what it imported
    at its start, not what HEAD became while it ran."""
    if cwd is None:
        if _STARTED_AT is None:
            globals()["_STARTED_AT"] = _read_commit(Path(__file__).resolve().parents[1])
        return dict(_STARTED_AT)  # type: ignore[arg-type]
    return _read_commit(cwd)


_STARTED_AT: dict[str, Any] | None = None


def _read_commit(cwd: Path) -> dict[str, Any]:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, check=True, timeout=30).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=cwd, capture_output=True, text=True, check=True,
                                timeout=30).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"sha": "unknown", "dirty": None}
    return {"sha": sha, "dirty": bool(status.strip())}
