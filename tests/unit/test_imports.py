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

REPO = Path(__file__).resolve().parents[2]
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


def _type_checking_only(node: ast.AST) -> bool:
    """An `if TYPE_CHECKING:` block."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def imported_packages(path: Path) -> list[tuple[str, int, bool]]:
    """(our top-level package, line, at module level?) for every import statement in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []

    def visit(node: ast.AST, top_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if _type_checking_only(child):
                continue  # loads nothing at run time: annotations only
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


# --------------------------------------------------------------------------- no cycle in engine/


def engine_import_graph() -> dict[str, dict[str, int]]:
    """engine module -> {engine module it imports: first line}, module-level and function-level alike.

    `from engine.x import y` names the module engine.x.y when that is a module, else engine.x; a
    package's __init__.py is the package's module.
    """
    paths = {name: REPO.joinpath(*name.split(".")) for name in modules_of("engine")}
    paths = {name: (path / "__init__.py" if path.is_dir() else path.with_suffix(".py")) for name, path in paths.items()}

    def nearest_module(name: str) -> str | None:
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, int]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            for target in targets:
                module = nearest_module(target) if target.split(".")[0] == "engine" else None
                if module and module != name:
                    edges.setdefault(module, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, on_path = [start], {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif nxt in on_path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                on_path.add(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_names_the_modules_in_order():
    graph = {
        "engine.a": {"engine.b": 3}, "engine.b": {"engine.c": 5}, "engine.c": {"engine.a": 9}, "engine.d": {"engine.a": 1},
    }
    assert find_cycle(graph) == ["engine.a", "engine.b", "engine.c", "engine.a"]
    assert find_cycle({"engine.a": {"engine.b": 1}, "engine.b": {}}) is None


def test_engine_has_no_import_cycle():
    graph = engine_import_graph()
    # The scan sees function-level imports (engine.train imports engine.callback inside _train).
    assert "engine.callback" in graph["engine.train"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in engine/: " + " -> ".join(
        f"{module} (line {graph[module][nxt]})" for module, nxt in zip(cycle, cycle[1:])
    ) + f" -> {cycle[-1]}"


# --------------------------------------------------------------------------- screens never import the CLI


def imported_modules(path: Path, text: str | None = None) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a file (or `text` as that file), function-level
    ones included; `from a import b` counts as a.b too, so `from tui import commands` is seen."""
    module = ".".join(path.relative_to(REPO).with_suffix("").parts)
    package = module.rpartition(".")[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    text = path.read_text(encoding="utf-8") if text is None else text
    found = []
    for node in ast.walk(ast.parse(text, str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, one level up per extra dot
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def test_screens_and_widgets_never_import_the_cli():
    problems = []
    for folder in ("tui/screens", "tui/widgets"):
        for path in sorted((REPO / folder).rglob("*.py")):
            lines = {}
            for module, line in imported_modules(path):
                if module == "tui.commands" or module.startswith("tui.commands.") or module == "tui.cli":
                    lines.setdefault(line, module)
            problems += [f"{path.relative_to(REPO)}:{line}: imports {module}" for line, module in sorted(lines.items())]
    assert not problems, "screens and widgets call jobs/ and engine/, never the CLI:\n" + "\n".join(problems)


def test_the_cli_scan_sees_function_level_and_relative_imports():
    text = "def f():\n    from tui.commands.chat_cmd import x\n\nfrom ..commands import common\nfrom tui import commands\n"
    found = {module for module, _ in imported_modules(REPO / "tui" / "screens" / "example.py", text)}
    assert {"tui.commands.chat_cmd", "tui.commands.common", "tui.commands"} <= found
