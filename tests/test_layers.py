"""Layers point one way (STYLE rule 5, DESIGN §4), checked statically on every module's imports.

``merge_env`` never imports ``agents`` or ``experiments``; inside it, ``merging`` (the engine,
usable alone) imports nothing from ``search``, and ``scoring`` nothing from ``pools`` or
``methods``. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (importing package, forbidden prefixes)
RULES = [
    ("merge_env", ("agents", "experiments")),
    ("merge_env.merging", ("merge_env.search", "merge_env.scoring", "merge_env.pools",
                           "merge_env.methods", "merge_env.env", "merge_env.wrappers")),
    ("merge_env.scoring", ("merge_env.pools", "merge_env.methods")),
    ("merge_env.search", ("merge_env.pools", "merge_env.methods")),
]  # fmt: skip


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a file under ``root``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from merge_env import search` imports the subpackage
            out += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
    return out


def violations(root: Path = ROOT) -> list[str]:
    """Every import statement that breaks a rule, as 'file:line: importer -> imported'."""
    found: dict[tuple[Path, int], str] = {}
    for path in sorted((root / "merge_env").rglob("*.py")):
        name = module_name(path, root)
        for line, mod in imported(path, root):
            for package, forbidden in RULES:
                if name != package and not name.startswith(package + "."):
                    continue
                if any(mod == f or mod.startswith(f + ".") for f in forbidden):
                    where = path.relative_to(root)
                    found.setdefault((where, line), f"{where}:{line}: {name} -> {mod}")
    return sorted(found.values())


def test_layers_point_one_way():
    assert violations() == []


@pytest.mark.parametrize(
    ("where", "line", "rule"),
    [
        ("merge_env/merging/bad.py", "from merge_env.search.recipe import Recipe", "search"),
        ("merge_env/merging/bad.py", "def f():\n    import merge_env.search.problem", "lazy"),
        ("merge_env/scoring/bad.py", "from merge_env.pools import spec", "pools"),
        ("merge_env/scoring/bad.py", "from merge_env.methods.moe import mixtral", "methods"),
        ("merge_env/bad.py", "from agents.base import Agent", "agents"),
        ("merge_env/search/bad.py", "import experiments.run", "experiments"),
        ("merge_env/merging/methods/bad.py", "from ...search import recipe", "relative"),
    ],
)
def test_the_check_catches_a_wrong_way_import(tmp_path, where, line, rule):
    bad = tmp_path / where
    bad.parent.mkdir(parents=True)
    bad.write_text(line + "\n")
    (tmp_path / "merge_env" / "fine.py").write_text("from merge_env.merging import plan\n")
    assert len(violations(tmp_path)) == 1, rule
