"""``ContextError``: a context value the stack cannot be built with, naming its key (``cdk synth`` prints it)."""

from __future__ import annotations


class ContextError(ValueError):
    """A context value the stack cannot be built with; ``key`` names the context key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"context key '{key}': {message}")
        self.key = key


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ContextError(key, message)`` unless ``condition`` holds."""
    if not condition:
        raise ContextError(key, message)


def in_range(key: str, value: float, low: float, high: float) -> None:
    """Raise ``ContextError`` naming ``key`` unless ``low <= value <= high``."""
    require(low <= value <= high, key, f"must be {low:g}..{high:g}, got {value:g}")
