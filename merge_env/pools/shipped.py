"""Zoos that ship with MergeGym: one build, the same bits on every machine.

A zoo trained on a CPU is a draw of that CPU's rounding: the same config and seed give other
weights on another machine (``results/drift_study/``), and every figure measured on them moves.
So the default zoo's seed 0 (what ``make run`` uses) also ships as files under
``merge_env/pools/shipped/zoo-<fingerprint>/``: its base, experts, base-run snapshots (the
recycling pool and the odd expert branch from them), tokenizer and manifest, exactly as
``build_zoo`` wrote them on the machine named in the manifest's ``built_on``.

``build_zoo`` installs a shipped copy into the cache instead of training, when one exists for the
config's fingerprint and the cache holds none (``shipped=False`` trains instead). Installing
checks every file against the SHA-256 listed in ``index.json`` and publishes the copy with one
rename, so a corrupt copy is named and never published (a killed install leaves a dot-folder
beside the cache's zoos, as a killed build does).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from merge_env.errors import CheckpointError
from merge_env.pools.cache import build_atomically, hash_file

SHIPPED_ROOT = Path(__file__).parent / "shipped"
INDEX = "index.json"
INDEX_FORMAT = "mergegym-shipped-zoos"
# written into the installed copy's zoo manifest: where it came from (build_zoo prints it)
INSTALLED_KEY = "installed"
# what every index entry holds (experiments/ship_zoo.py writes them)
ENTRY_KEYS = ("folder", "manifest", "files", "weights_digest")


def file_sha256(path: Path) -> str:
    """The SHA-256 of one file."""
    h = hashlib.sha256()
    hash_file(h, path)
    return h.hexdigest()


def list_files(folder: Path) -> dict[str, str]:
    """Every file under ``folder``, by its POSIX path relative to it, with its SHA-256."""
    return {
        p.relative_to(folder).as_posix(): file_sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def read_index(root: Path | None = None) -> dict[str, dict[str, Any]]:
    """The shipped zoos by fingerprint (``{}`` when none ship); a broken index, or an entry
    without its folder, manifest and file list, raises CheckpointError naming it."""
    path = (root or SHIPPED_ROOT) / INDEX
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        if data.get("format") != INDEX_FORMAT or not isinstance(data["zoos"], dict):
            raise ValueError("not a MergeGym shipped-zoo index")
        for fingerprint, entry in data["zoos"].items():
            missing = [k for k in ENTRY_KEYS if k not in entry]
            if missing or not isinstance(entry["files"], dict):
                raise ValueError(f"zoo {fingerprint}: no {missing or 'file list'}")
        return data["zoos"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: unreadable shipped-zoo index ({err!r})") from err


def shipped_entry(fingerprint: str, root: Path | None = None) -> dict[str, Any] | None:
    """The index entry of the shipped zoo with this fingerprint, or None."""
    return read_index(root).get(fingerprint)


def verify(folder: Path, files: Mapping[str, str]) -> None:
    """Check that ``folder`` holds exactly ``files`` (relative path -> SHA-256); CheckpointError
    names the first file missing, extra or different."""
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for rel in sorted(files):
        if rel not in found:
            raise CheckpointError(f"{folder / rel}: missing from the shipped zoo")
        digest = file_sha256(folder / rel)
        if digest != files[rel]:
            raise CheckpointError(
                f"{folder / rel}: SHA-256 {digest[:16]}... is not the shipped file's "
                f"{files[rel][:16]}... (a corrupt or edited copy)"
            )
    extra = sorted(found - set(files))
    if extra:
        raise CheckpointError(f"{folder / extra[0]}: not a file of the shipped zoo")


def install(fingerprint: str, dest: Path, root: Path | None = None) -> dict[str, Any]:
    """Copy the shipped zoo ``fingerprint`` to ``dest`` (a cache's ``zoo-<fingerprint>``),
    verified file by file, published as every cached build is (``build_atomically``); return
    its index entry.

    The copy is made writable (the jobs add the extras beside it) and its manifest gains an
    ``installed`` record (from where, when) and ``install_seconds``. A copy that fails
    verification is removed and CheckpointError names the bad file; if another process
    published ``dest`` first, its copy is kept.
    """
    root = root or SHIPPED_ROOT
    entry = shipped_entry(fingerprint, root)
    if entry is None:
        raise CheckpointError(f"{root / INDEX}: no shipped zoo {fingerprint}")
    src = root / entry["folder"]
    if not src.is_dir():
        raise CheckpointError(f"{src}: listed in {root / INDEX} but missing")

    def copy(tmp: Path) -> dict[str, Any]:
        shutil.copytree(src, tmp)
        for path in [tmp, *tmp.rglob("*")]:  # the package may be read-only; the copy must not
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        verify(tmp, entry["files"])
        data = json.loads((tmp / entry["manifest"]).read_text())
        data[INSTALLED_KEY] = {"from": str(src), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return data

    build_atomically(dest, entry["manifest"], copy, "install_seconds")
    return entry
