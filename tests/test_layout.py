"""The code's shape that DESIGN.md promises: every package ships, the core imports no adapter, modules stay small."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Where each installed package's folder is (pyproject's package-dir).
FOLDERS = {"cdc": ROOT / "cdc", "cdc.adapters": ROOT / "adapters", "cdc.mappings": ROOT / "mappings"}


def _packages_on_disk() -> set[str]:
    return {".".join([name, *init.parent.relative_to(folder).parts])
            for name, folder in FOLDERS.items() for init in folder.rglob("__init__.py")}


def test_every_package_folder_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    missing = sorted(_packages_on_disk() - listed)
    assert not missing, f"packages a non-editable install would leave out (add them to pyproject.toml): {missing}"


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level and path.is_relative_to(ROOT / "cdc"):  # relative: resolve against cdc/
                parts = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                module = ".".join([*parts, module] if module else parts)
            names.append(module)
    return names


def test_the_core_imports_no_adapter():
    offenders = [f"{path.relative_to(ROOT)}: {name}" for path in (ROOT / "cdc").rglob("*.py")
                 for name in _imports(path) if name.startswith("cdc.adapters")]
    assert not offenders, offenders


def test_no_module_is_over_400_lines():
    """Modules split by concept (STYLE.md): a module past 400 lines is doing more than one thing."""
    long = {str(path.relative_to(ROOT)): n for folder in (ROOT / "cdc", ROOT / "adapters")
            for path in folder.rglob("*.py") if (n := len(path.read_text().splitlines())) > 400}
    assert not long, long
