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
