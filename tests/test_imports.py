"""The package import table (DESIGN.md) and the light start-up of the TUI and the CLI.

Two checks: a subprocess imports modules and looks at sys.modules (what really loads), and an AST
scan of every import statement (what a module could load later, e.g. inside a function).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets")
OURS = ("presets", "engine", "jobs", "tui")


def modules_of(package: str) -> list[str]:
    names = []
    for path in sorted((REPO / package).rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def loaded_after_import(modules: list[str], extra: str = "") -> set[str]:
    """Top-level package names in sys.modules after importing `modules` in a fresh interpreter."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"{extra}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_tui_and_cli_start_without_heavy_libraries():
    tui_modules = [m for m in modules_of("tui") if not m.startswith("tui.commands.")] + ["tui.app", "tui.cli"]
    loaded = loaded_after_import(tui_modules, extra="import tui.cli\ntui.cli.build_parser()")
    assert not loaded & set(HEAVY), f"imported at start-up: {sorted(loaded & set(HEAVY))}"
    assert "engine" not in loaded, "the TUI imports engine only lazily, inside functions"


def test_presets_import_nothing_of_ours():
    loaded = loaded_after_import(modules_of("presets"))
    assert not loaded & {"engine", "jobs", "tui"}


def test_jobs_import_engine_only_lazily_and_never_tui():
    loaded = loaded_after_import(modules_of("jobs"))
    assert "tui" not in loaded
    assert "engine" not in loaded, "jobs imports engine only inside function bodies"
    assert not loaded & set(HEAVY)


# --------------------------------------------------------------------------- AST scan


def imported_packages(path: Path) -> list[tuple[str, int, bool]]:
    """(our top-level package, line, at module level?) for every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    found.append((alias.name.split(".")[0], child.lineno, top_level))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.append((child.module.split(".")[0], child.lineno, top_level))
            visit(child, top_level and not nested)

    visit(tree, True)
    return [(package, line, top) for package, line, top in found if package in OURS]


# package → (may import anywhere, may import only inside functions)
RULES = {
    "presets": ({"presets"}, set()),
    "engine": ({"engine", "presets"}, set()),
    "jobs": ({"jobs", "presets"}, {"engine"}),
    "tui": ({"tui", "presets", "jobs"}, {"engine"}),
}


@pytest.mark.parametrize("package", sorted(RULES))
def test_import_table(package):
    anywhere, lazily = RULES[package]
    problems = []
    for path in sorted((REPO / package).rglob("*.py")):
        for imported, line, top_level in imported_packages(path):
            if imported in anywhere or (imported in lazily and not top_level):
                continue
            where = "at module level" if top_level else "inside a function"
            problems.append(f"{path.relative_to(REPO)}:{line}: imports {imported} {where}")
    assert not problems, "\n".join(problems)
