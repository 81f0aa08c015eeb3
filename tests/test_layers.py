"""Imports point down: the CLI and dev mode on top, then ``ingress`` and ``worker`` side by side,
``shared`` at the bottom; no cycles. Every import is read, at module level and inside functions."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The source folder of each layer, and the package it installs as.
LAYERS = {"botrelay": ROOT / "botrelay", "botrelay.shared": ROOT / "shared",
          "botrelay.ingress": ROOT / "ingress", "botrelay.worker": ROOT / "worker"}
# What each layer may import from the project (besides itself).
ALLOWED = {
    "botrelay.shared": set(),
    "botrelay.ingress": {"botrelay.shared"},
    "botrelay.worker": {"botrelay.shared"},
    "botrelay": {"botrelay.shared", "botrelay.ingress", "botrelay.worker"},
}
BARE = ("shared", "ingress", "worker", "examples")


def _modules() -> Iterator[tuple[str, Path]]:
    for package, folder in LAYERS.items():
        for path in sorted(folder.glob("*.py") if package == "botrelay" else folder.rglob("*.py")):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            yield ".".join([package, *parts]), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, resolved to absolute names (relative imports included)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # ``from botrelay import worker`` imports a package too
                yield node.lineno, f"{target}.{alias.name}"


def _layer(name: str) -> str | None:
    """The layer a project module belongs to (the longest matching package), else None."""
    matches = [p for p in LAYERS if name == p or name.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def _project_module(name: str, known: set[str]) -> str | None:
    """``name`` if it is a project module, else its nearest project parent (``a.b.C``: ``a.b``)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


MODULES = dict(_modules())


def test_the_tree_is_read() -> None:
    assert {"botrelay.cli", "botrelay.shared.settings", "botrelay.ingress.app",
            "botrelay.worker.consumer"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module: str) -> None:
    layer = _layer(module)
    assert layer is not None
    wrong = []
    for line, target in _imports(module, MODULES[module]):
        if target.split(".")[0] in BARE:
            wrong.append(f"line {line}: {target} (a bare top-level name; use botrelay.*)")
            continue
        dep = _project_module(target, set(MODULES))
        if dep is None:
            continue
        dep_layer = _layer(dep)
        if dep_layer != layer and dep_layer not in ALLOWED[layer]:
            wrong.append(f"line {line}: {target} ({layer} must not import {dep_layer})")
    assert wrong == []


def test_no_import_cycle() -> None:
    known = set(MODULES)
    graph = {m: {d for _, t in _imports(m, p) if (d := _project_module(t, known)) and d != m}
             for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how a public API is exported, and
    # Python handles that order; a cycle among plain modules is what this test is for.
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return [*stack[stack.index(d):], d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail(" -> ".join(cycle))
