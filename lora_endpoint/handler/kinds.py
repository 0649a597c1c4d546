"""The request kinds behind one interface, and the one place a body's shape picks its kind.

``inputs``/``prompt`` -> generate, ``query`` -> RAG, ``messages`` -> chat, ``task`` -> info. Each kind's
module has the same surface (``parse``, ``to_rows``, ``render``, ``render_stream``; info only
``parse`` and ``render``), and each request carries its ``kind``, so no caller needs to know the types.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

from lora_endpoint.contract.errors import InvalidRequest
from lora_endpoint.contract.settings import HandlerSettings

from . import chat, generate, info, rag
from .adapters import BASE_MODEL_ALIASES

MODULES: dict[str, ModuleType] = {"generate": generate, "rag": rag, "chat": chat, "info": info}
# The body key that picks the kind, in the order they are tried.
_SHAPES = (("task", info.parse), ("messages", chat.parse), ("query", rag.parse), ("inputs", generate.parse),
           ("prompt", generate.parse_simple))


def module(request: Any) -> ModuleType:
    """The module of a parsed request's kind."""
    return MODULES[request.kind]


def parse_body(data: Mapping[str, Any], settings: HandlerSettings) -> Any:
    """Dispatch a decoded JSON object to the parser of its shape."""
    for key, parse in _SHAPES:
        if key in data:
            return parse(data, settings)
    raise InvalidRequest(
        "request must have one of: inputs (generate), prompt (simple generate), query (RAG), "
        "messages (chat), task (info)"
    )


def with_adapter_header(request: Any, adapter: str | None) -> Any:
    """Apply ``X-Amzn-SageMaker-Adapter-Identifier``: it names the adapter when the body names none."""
    if not adapter:
        return request
    return request.with_default_adapter(None if adapter in BASE_MODEL_ALIASES else adapter)
