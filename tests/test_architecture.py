"""The layers as ARCHITECTURE.md draws them, checked on the source: no import circles, each layer
imports only the layers below it, and no function longer than a screen."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "unmemorize"
# What each layer may import (besides itself); everything else there is above it.
ALLOWED = {
    "training": {"config", "data", "errors", "events", "focus", "methods", "metrics", "models", "paths"},
    "methods": {"errors", "metrics"},
    "metrics": {"errors", "paths"},
    # Attacks transform a model (quantize, fine-tune again) or its prompts; the robustness suite scores them.
    "attacks": {"config", "data", "errors", "events", "methods", "metrics", "models", "paths", "training"},
    "suites": {"attacks", "config", "data", "errors", "events", "metrics", "models", "paths"},
    # Reporting runs no inference: of the metrics it reads only the statistics (see below).
    "reporting": {"errors", "metrics", "paths"},
    "recipes": {"attacks", "config", "data", "errors", "events", "focus", "methods", "metrics", "models", "paths",
                "reporting", "suites", "synthetic", "training"},
}
# The metrics modules reporting may import: pure statistics, no model.
REPORTING_READS = {"unmemorize.metrics.uncertainty"}
LONGEST_FUNCTION = 100


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every unmemorize module ``name`` imports, at the top or inside a function."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
            found |= {c for c in candidates if c in modules and c != name}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    return found


def test_no_import_circles():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import circle: " + " -> ".join(path + [name, target])
            if target not in state:
                visit(target, path + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_each_layer_imports_only_the_layers_below():
    modules = _modules()
    for name, path in modules.items():
        parts = name.split(".")
        layer = parts[1] if len(parts) > 1 else None
        if layer not in ALLOWED:
            continue
        for target in _imports(name, path, modules):
            other = target.split(".")[1] if target.count(".") else "__init__"
            # The package root holds only the version string.
            assert other in (layer, "__init__") or other in ALLOWED[layer], f"{name} imports {target}"


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_reporting_imports_no_inference():
    modules = _modules()
    for name, path in modules.items():
        if name.startswith("unmemorize.reporting"):
            metrics = {t for t in _imports(name, path, modules) if t.startswith("unmemorize.metrics")}
            assert metrics <= REPORTING_READS, f"{name} imports {metrics - REPORTING_READS}"
