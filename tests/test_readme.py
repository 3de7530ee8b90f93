"""The README's architecture map names every module of the three packages, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGES = ("merge_env", "agents", "experiments")


def map_block(readme: str) -> str:
    """The fenced block under the README's ``## Architecture`` heading."""
    section = readme.split("\n## Architecture\n", 1)
    assert len(section) == 2, "README.md has no '## Architecture' section"
    block = re.search(r"```\n(.*?)\n```", section[1], re.S)
    assert block, "README.md's Architecture section has no fenced block"
    return block.group(1)


def mapped_modules(block: str) -> set[str]:
    """Paths of the ``.py`` entries of the map: an entry's first word is a file or a folder, and
    its indentation, two spaces under its folder's, says which folder holds it; a description's
    second line is indented further and is skipped even where it starts with a file name."""
    stack: list[tuple[int, str]] = []
    found = set()
    for line in block.splitlines():
        word = line.split(maxsplit=1)[0] if line.strip() else ""
        if not (word.endswith("/") or word.endswith(".py")):
            continue
        indent = len(line) - len(line.lstrip())
        parents = [entry for entry in stack if entry[0] < indent]
        if indent != (parents[-1][0] + 2 if parents else 0):
            continue
        stack = parents
        if word.endswith("/"):
            stack.append((indent, word.rstrip("/")))
        else:
            found.add("/".join([name for _, name in stack] + [word]))
    return {path for path in found if path.split("/", 1)[0] in PACKAGES}


def package_modules() -> set[str]:
    files = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT).as_posix()
            # experiments/bench_<name>.py only forward to experiments/bench/<name>.py; the map
            # says so on bench/'s line instead of listing each.
            if path.name == "__init__.py" or re.fullmatch(r"experiments/bench_\w+\.py", rel):
                continue
            files.add(rel)
    return files


def test_the_parser_reads_nesting():
    block = (
        "pkg/   top\n  a.py   one\n  sub/   folder\n    b.py  two\n         c.py is prose\n  d.py\n"
    )
    assert mapped_modules(block.replace("pkg/", "agents/")) == {
        "agents/a.py",
        "agents/sub/b.py",
        "agents/d.py",
    }


def test_architecture_map_matches_the_packages():
    mapped = mapped_modules(map_block((ROOT / "README.md").read_text()))
    actual = package_modules()
    assert not actual - mapped, f"modules missing from README.md's map: {sorted(actual - mapped)}"
    assert not mapped - actual, f"README.md's map names no such module: {sorted(mapped - actual)}"
