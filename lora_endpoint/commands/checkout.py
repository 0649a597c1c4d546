"""The source checkout this package runs from, for the commands that need more than the installed package:
the CDK app (``cdk/``, run from the tree, never installed), the benchmarks and the demo (``scripts/``)."""

from __future__ import annotations

import sys
from pathlib import Path

import lora_endpoint


class NoCheckout(Exception):
    """The command needs a source checkout and this installation is not one."""


def source_checkout(command: str, needs: str) -> Path:
    """The checkout's root (it holds ``needs``, e.g. ``cdk.json``), with the root first on ``sys.path`` so its
    ``scripts`` and ``cdk`` packages import."""
    root = Path(next(iter(lora_endpoint.__path__))).resolve().parent
    if not (root / needs).exists():
        raise NoCheckout(
            f"lora-endpoint {command} runs from a source checkout (it needs {needs}, not installed with the "
            f"package): git clone the project, `make venv` there, and run it from that tree; {root} has no {needs}")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root


def checkout_main(command: str, needs: str, module: str, argv: list[str]) -> int:
    """Run ``module.main(argv)`` from the checkout; exit 2 with one line when there is none."""
    import importlib

    try:
        source_checkout(command, needs)
    except NoCheckout as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    code: int = importlib.import_module(module).main(argv)
    return code
