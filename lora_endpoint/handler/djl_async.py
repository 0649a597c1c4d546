"""DJL Serving's async mode (``option.async_mode=true``): how answers are encoded for its frontend.

In this mode every request is its own ``await handle(inputs)`` on DJL's event loop, and an Output is
not a plain body: its content is ``Output.binary_encode({"data": str, "last": bool})`` (djl-serving
``async_utils`` and the frontend's ``Request.addResponse``). A stream is an async generator of such
Outputs, the last one with ``last`` true. A ``code`` in the map becomes the HTTP status, and then the
frontend writes the body itself: ``{"code": <status>, "error": <error>}``. So an error here carries our
status, and its ``error`` string starts with our machine-readable type: ``"unknown_adapter: adapter
'x' is not served here; ..."``. Headers (Content-Type, Retry-After) travel as the Output's properties.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from lora_endpoint.contract.errors import GenerationFailed, HandlerError

from .media import JSON


def _output(output_cls: Any, record: dict[str, Any], properties: dict[str, str]) -> Any:
    out = output_cls()
    for key, value in properties.items():
        out.add_property(key, value)
    out.add(output_cls.binary_encode(record))
    return out


def answer_output(output_cls: Any, answer: Any) -> Any:
    """A whole JSON answer."""
    return _output(output_cls, {"data": json.dumps(answer, ensure_ascii=False), "last": True}, {"Content-Type": JSON})


def error_output(output_cls: Any, err: HandlerError | None) -> Any:
    """An error answer with its own status; ``None`` is a generic 500 (details only in the log)."""
    err = err or GenerationFailed()
    properties = {"Content-Type": JSON}
    if err.retry_after:
        properties["Retry-After"] = str(err.retry_after)
    return _output(output_cls, {"data": "", "last": True, "code": err.status, "error": f"{err.code}: {err.message}"},
                   properties)


async def stream_outputs(output_cls: Any, chunks: AsyncIterator[bytes], media: str) -> AsyncGenerator[Any, None]:
    """One Output per chunk (the first carries the Content-Type), then an empty last one."""
    properties = {"Content-Type": media}
    try:
        async for chunk in chunks:
            yield _output(output_cls, {"data": chunk.decode("utf-8"), "last": False}, properties)
            properties = {}
        yield _output(output_cls, {"data": "", "last": True}, properties)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()  # the frontend stopped reading: the engine drops the rows
