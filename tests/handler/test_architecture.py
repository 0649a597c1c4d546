"""Dependency direction and import cost, checked on the source (STYLE.md: folders are the architecture)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


def test_handler_imports_neither_cdk_nor_model_package_nor_scripts() -> None:
    assert not imported_modules(ROOT / "handler") & {"cdk", "aws_cdk", "model_package", "scripts"}


def test_importing_the_handler_is_cheap() -> None:
    # DJL imports model.py several times: no torch / transformers / peft at import.
    code = "import sys, handler.entry; print(sorted(m for m in ('torch','transformers','peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _handler_graph() -> dict[str, set[str]]:
    """handler module -> the handler modules it imports (relative imports, at any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "handler").glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        graph[path.stem] = deps - {"__init__"}
    return graph


def test_the_handler_import_graph_has_no_cycle() -> None:
    graph = _handler_graph()
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        if name in done:
            return
        for dep in graph.get(name, ()):
            visit(dep, (*trail, name))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_the_decode_loop_and_sampling_know_nothing_of_request_shapes() -> None:
    graph = _handler_graph()
    shapes = {"generate", "rag", "chat", "info", "kinds", "body", "contract", "media", "entry", "service"}

    def reach(name: str, seen: set[str]) -> set[str]:
        for dep in graph.get(name, ()):
            if dep not in seen:
                seen.add(dep)
                reach(dep, seen)
        return seen

    for leaf in ("generation", "sampling"):
        assert not reach(leaf, set()) & shapes, leaf
