"""Typed access to CDK context values, which are JSON values (``cdk.json``) or strings (``-c key=value``).

Every read records its key in ``asked``, so ``settings.known_keys()`` can list what the app reads.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cdk.errors import ContextError
from cdk.errors import require as _require

T = TypeVar("T")


class ContextReader:
    """Typed access to context values that may be JSON values or ``-c key=value`` strings."""

    def __init__(self, ctx: Mapping[str, Any]) -> None:
        self._ctx = ctx
        self.asked: set[str] = set()

    def _raw(self, key: str) -> Any:
        self.asked.add(key)
        return self._ctx.get(key)

    def text(self, key: str, default: str) -> str:
        value = self._raw(key)
        if value is None:
            return default
        _require(isinstance(value, str | int | float), key, f"must be a string, got {value!r}")
        return str(value).strip()

    def given(self, key: str) -> bool:
        """Whether ``key`` was set (to anything but an empty string)."""
        value = self._raw(key)
        return value is not None and value != ""

    def boolean(self, key: str, default: bool) -> bool:
        value = self._raw(key)
        if value is None or value == "":
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        _require(text in ("true", "false"), key, f"must be true or false, got {value!r}")
        return text == "true"

    def records(self, key: str, fields: tuple[str, ...]) -> list[dict[str, Any]]:
        """A JSON list of objects with exactly ``fields`` (a list in cdk.json, a JSON string from ``-c``)."""
        value = self._raw(key)
        if value is None or value == "":
            return []
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ContextError(key, f"must be a JSON list, got {value!r}") from None
        _require(isinstance(value, list), key, f"must be a list of objects, got {value!r}")
        for item in value:
            _require(isinstance(item, dict) and set(item) == set(fields), key,
                     f"each entry must be an object with exactly {', '.join(fields)}, got {item!r}")
        return list(value)

    def integer(self, key: str, default: int) -> int:
        value = self._raw(key)
        if value is None or value == "":
            return default
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ContextError(key, f"must be an integer, got {value!r}") from None
        _require(number.is_integer() and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
        return int(number)

    def number(self, key: str, default: float) -> float:
        value = self._raw(key)
        if value is None or value == "":
            return default
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ContextError(key, f"must be a number, got {value!r}") from None

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._raw(key)
        if value is None or value == "":
            return ()
        if isinstance(value, str):
            value = [part for part in value.split(",")]
        _require(isinstance(value, list), key, f"must be a list or a comma-separated string, got {value!r}")
        return tuple(str(item).strip() for item in value if str(item).strip())

    def mapping(self, key: str) -> Mapping[str, Any]:
        value = self._raw(key)
        if value is None or value == "":
            return {}
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ContextError(key, f"must be a JSON object, got {value!r}") from None
        _require(isinstance(value, dict), key, f"must be an object, got {value!r}")
        return dict(value)

    def parsed(self, key: str, default: str, parse: Callable[[str], T]) -> T:
        try:
            return parse(self.text(key, default))
        except ValueError as err:
            if isinstance(err, ContextError):
                raise
            raise ContextError(key, str(err)) from None
