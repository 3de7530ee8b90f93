"""Ship a zoo built here with MergeGym: copy its base and experts into merge_env/pools/shipped.

    python -m experiments.ship_zoo --seed 0          # the default preset's seed 0 (make run's)

The zoo must be in the cache, trained on this machine (not itself installed from a shipped
copy). Its base, experts, base-run snapshots, tokenizer and manifest are copied to
``merge_env/pools/shipped/zoo-<fingerprint>/``, and ``index.json`` lists every file's SHA-256,
the base + experts' weights digest (as ``build_zoo`` prints it), the machine that trained it,
and its TEST exact-match table (base and experts), which ``tests/pools/test_shipped.py`` scores
again on every machine the tests run on. The recycling pool and the odd expert are not shipped:
they train on first request from the snapshots, on the user's machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from rich.console import Console

from experiments.build_zoo import core_digest, score_zoo, zoo_config
from merge_env.errors import ConfigError, exit_on_error
from merge_env.pools.cache import default_cache_dir
from merge_env.pools.shipped import (
    INDEX,
    INDEX_FORMAT,
    INSTALLED_KEY,
    SHIPPED_ROOT,
    list_files,
    read_index,
)
from merge_env.pools.zoo import EXTRAS, MANIFEST, load_zoo


def ship(
    preset: str, seed: int, cache_dir: str | Path | None = None, root: Path = SHIPPED_ROOT
) -> dict:
    """Copy the cached zoo (``preset``, ``seed``) into ``root`` and list it in the index;
    return its index entry."""
    config = zoo_config(preset, seed, ())
    fingerprint = config.fingerprint()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    src = cache / f"zoo-{fingerprint}"
    if not (src / MANIFEST).is_file():
        raise ConfigError(
            f"{src}: no zoo {preset!r} seed {seed} in the cache; build it first "
            f"(python -m experiments.build_zoo --preset {preset} --seed {seed} --core-only)"
        )
    manifest = json.loads((src / MANIFEST).read_text())
    if INSTALLED_KEY in manifest:
        raise ConfigError(f"{src}: was itself installed from a shipped copy; ship a zoo built here")
    zoo = load_zoo(src)
    scores = score_zoo(zoo, "test")
    names = ["base", *(f"expert:{k}" for k in zoo.experts)]
    folder = f"zoo-{fingerprint}"
    dest = root / folder
    tag = uuid.uuid4().hex[:8]
    tmp, old, index_tmp = root / f".tmp-{folder}-{tag}", root / f".old-{folder}-{tag}", None
    root.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(src, tmp, ignore=lambda d, names: [EXTRAS] if Path(d) == src else [])
        entry = {
            "preset": preset,
            "seed": seed,
            "folder": folder,
            "manifest": MANIFEST,
            "weights_digest": core_digest(zoo),
            "built_on": manifest.get("built_on", {}),
            "train_threads": manifest.get("train_threads"),
            "build_seconds": manifest.get("build_seconds"),
            # examples right of those scored, per model and task (TEST split, teacher-forced)
            "test_exact_match": {
                n: {
                    t.name: [
                        round(scores[n][t.name].exact_match * scores[n][t.name].n),
                        scores[n][t.name].n,
                    ]
                    for t in zoo.tasks
                }
                for n in names
            },
            "files": list_files(tmp),
        }
        index = {"format": INDEX_FORMAT, "zoos": {**read_index(root), fingerprint: entry}}
        index_tmp = root / f".{INDEX}-{tag}"
        index_tmp.write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
        # publish: an earlier copy of this zoo moves aside, the new one and the index take
        # their places by rename, then the old copy goes
        if dest.exists():
            os.rename(dest, old)
        os.rename(tmp, dest)
        tmp = dest  # the new copy, removed below if the index cannot follow it
        os.replace(index_tmp, root / INDEX)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists():
            os.rename(old, dest)
        if index_tmp is not None:
            index_tmp.unlink(missing_ok=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m experiments.ship_zoo", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", default="default", choices=["default", "v5", "v4", "tiny"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    entry = ship(args.preset, args.seed, args.cache_dir)
    size = sum((SHIPPED_ROOT / entry["folder"] / f).stat().st_size for f in entry["files"])
    Console().print(
        f"shipped zoo {args.preset!r} seed {args.seed} as {SHIPPED_ROOT / entry['folder']}: "
        f"{len(entry['files'])} files, {size / 2**20:.1f} MiB, base + experts' weights sha256 "
        f"{entry['weights_digest']}"
    )
    return 0


if __name__ == "__main__":
    exit_on_error(main)
