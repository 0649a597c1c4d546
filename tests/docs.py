"""The README and the reference in docs/, for the tests that keep them in step with the code."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def doc(name: str) -> str:
    """``docs/<name>.md``'s text."""
    return (DOCS / f"{name}.md").read_text(encoding="utf-8")


def all_docs() -> str:
    """The README and every page of docs/, one after the other."""
    return "\n".join(p.read_text(encoding="utf-8") for p in [README, *sorted(DOCS.glob("*.md"))])
