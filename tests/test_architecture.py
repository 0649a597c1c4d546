"""The layout, checked on the source (STYLE.md: folders are the architecture): which component may import
which, no import cycle, one namespaced package installed, and a handler that is cheap to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lora_endpoint"
# component -> the components it may import (itself included). The artifact ships contract + handler, so
# they may import nothing else; the CDK app runs from a checkout and reads only the contract.
ALLOWED = {
    "lora_endpoint.contract": {"lora_endpoint.contract"},
    "lora_endpoint.handler": {"lora_endpoint.contract", "lora_endpoint.handler"},
    "lora_endpoint.packaging": {"lora_endpoint.contract", "lora_endpoint.handler", "lora_endpoint.packaging"},
    "lora_endpoint.training": {"lora_endpoint.contract", "lora_endpoint.handler", "lora_endpoint.packaging",
                               "lora_endpoint.training"},
    "lora_endpoint.local": {"lora_endpoint.contract", "lora_endpoint.handler", "lora_endpoint.packaging",
                            "lora_endpoint.local"},
    "lora_endpoint.clients": {"lora_endpoint.contract", "lora_endpoint.handler", "lora_endpoint.packaging",
                              "lora_endpoint.local", "lora_endpoint.clients"},
    "lora_endpoint.commands": {"lora_endpoint", "lora_endpoint.contract", "lora_endpoint.handler",
                               "lora_endpoint.packaging", "lora_endpoint.training", "lora_endpoint.local",
                               "lora_endpoint.clients", "lora_endpoint.commands"},
    "lora_endpoint.cli": {"lora_endpoint", "lora_endpoint.commands", "lora_endpoint.cli"},
    "cdk": {"lora_endpoint.contract", "cdk"},
}
PROJECT = ("lora_endpoint", "cdk", "scripts")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


@cache
def project_modules() -> dict[str, Path]:
    files = [p for top in PROJECT for p in (ROOT / top).rglob("*.py") if "djl_compat" not in p.parts]
    return {_module_name(p): p for p in files}


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:`` (type-only imports run nothing)."""
    nodes: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        nodes.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return nodes


@cache
def imports() -> dict[str, frozenset[str]]:
    """Project module -> the project modules it imports, anywhere in the file (lazy imports count too)."""
    modules = project_modules()
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in _runtime_nodes(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(name, node, path.name == "__init__.py")
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)  # from pkg import module
        graph[name] = frozenset(m for m in found if m in modules and m != name)
    return graph


def component(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "lora_endpoint" and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0]


def test_each_component_imports_only_what_it_may() -> None:
    # The namespace's own __init__ (import-free, shipped in every artifact) may be read by anyone.
    wrong = sorted(f"{module} imports {dep}" for module, deps in imports().items() if component(module) in ALLOWED
                   for dep in deps if dep != "lora_endpoint" and component(dep) not in ALLOWED[component(module)])
    assert not wrong, "\n".join(wrong)


def test_nothing_installed_imports_the_cdk_app_or_the_scripts() -> None:
    wrong = sorted(f"{module} imports {dep}" for module, deps in imports().items() if module.startswith("lora_endpoint")
                   for dep in deps if not dep.startswith("lora_endpoint"))
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_what_it_must_refuse() -> None:
    # The rules above are only as good as the graph: it must see a CDK module reading the contract, a
    # handler module's relative imports and a lazy import inside a function.
    graph = imports()
    assert "lora_endpoint.contract.api" in graph["cdk.components.api_mapping"]
    assert "lora_endpoint.handler.loading" in graph["lora_endpoint.handler.entry"]
    assert "lora_endpoint.handler.entry" in graph["lora_endpoint.local.package"]  # imported inside a function


def test_the_import_graph_has_no_cycle() -> None:
    graph = imports()
    done: set[str] = set()

    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail[trail.index(name):], name))
        if name in done:
            return
        for dep in sorted(graph.get(name, ())):
            if dep != name.rsplit(".", 1)[0]:  # a module's own package __init__ is not an edge back
                visit(dep, (*trail, name))
        done.add(name)

    for name in sorted(graph):
        visit(name, ())


def test_the_decode_loop_and_sampling_know_nothing_of_request_shapes() -> None:
    graph = imports()
    shapes = {f"lora_endpoint.handler.{m}" for m in ("generate", "rag", "chat", "info", "kinds", "body", "media",
                                                     "entry", "service")} | {"lora_endpoint.contract.api"}

    def reach(name: str, seen: set[str]) -> set[str]:
        for dep in graph.get(name, ()):
            if dep not in seen:
                seen.add(dep)
                reach(dep, seen)
        return seen

    for leaf in ("lora_endpoint.handler.generation", "lora_endpoint.handler.sampling"):
        assert not reach(leaf, set()) & shapes, leaf


def test_the_namespace_init_shipped_in_every_artifact_imports_nothing() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)]


def test_the_distribution_installs_one_namespaced_package() -> None:
    # What pyproject's [tool.setuptools.packages.find] selects, computed the way setuptools does.
    text = (ROOT / "pyproject.toml").read_text()
    assert 'include = ["lora_endpoint*"]' in text
    packages = find_packages(str(ROOT), include=["lora_endpoint*"])
    assert packages and all(p == "lora_endpoint" or p.startswith("lora_endpoint.") for p in packages)
    assert {"lora_endpoint.handler", "lora_endpoint.contract", "lora_endpoint.local"} <= set(packages)


def test_an_editable_install_maps_only_the_namespace() -> None:
    finders = list(Path(sys.prefix).glob("lib/python*/site-packages/__editable___lora_endpoint_*_finder.py"))
    if not finders:
        pytest.skip("lora-endpoint is not installed editable in this environment (the compat tiers run from the tree)")
    mapping = next(line for line in finders[0].read_text().splitlines() if line.startswith("MAPPING"))
    assert "'lora_endpoint':" in mapping and not any(f"'{name}'" in mapping for name in ("handler", "cdk", "scripts"))


def test_importing_the_handler_is_cheap() -> None:
    # DJL imports model.py several times: no torch / transformers / peft at import.
    code = ("import sys, lora_endpoint.handler.entry; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_built_wheel_holds_only_the_namespace(tmp_path: Path) -> None:
    # GIVEN the wheel pip would install (built from this tree with the environment's setuptools)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    if built.returncode != 0 and "No module named pip" in built.stderr:
        pytest.skip("pip is not available in this environment")
    assert built.returncode == 0, built.stderr[-2000:]
    import zipfile

    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        names = wheel.namelist()
        entry_points = next(wheel.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    # THEN one top-level package (and its metadata), the DJL stand-in's files as package data, the console scripts
    assert {n.split("/")[0] for n in names} == {"lora_endpoint", "lora_endpoint-0.1.0.dist-info"}
    assert "lora_endpoint/local/djl_compat/djl_python/inputs.py" in names
    assert not [n for n in names if n.startswith(("lora_endpoint/cdk", "lora_endpoint/scripts", "lora_endpoint/tests"))]
    for script in ("lora-endpoint = lora_endpoint.cli:main", "lora-package = ", "lora-serve-local = "):
        assert script in entry_points
