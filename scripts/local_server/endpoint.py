"""What every route shares: the served model, its batcher, and how one request reaches ``handle()``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import DEFAULT_ENDPOINT_NAME, DEFAULT_VARIANT
from .batcher import Batcher
from .djl_io import Answer, Call
from .package import ServedModel
from .streaming import pump


class NotReady(Exception):
    """The model is still loading (or failed to load)."""


def wants_stream(body: bytes) -> bool:
    """True when the body is a JSON object with ``"stream": true`` (anything else is the handler's call)."""
    if b"stream" not in body:
        return False
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and data.get("stream") is True


def error_body(status: int, error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The handler's error body shape (handler/errors.py ``HandlerError.body``), for errors raised here."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if param:
        error["param"] = param
    return {"code": status, "type": error_type, "message": message, "error": error}


@dataclass
class EndpointState:
    served: ServedModel
    batcher: Batcher
    endpoint_name: str = DEFAULT_ENDPOINT_NAME
    variant: str = DEFAULT_VARIANT

    @property
    def ready(self) -> bool:
        return self.served.ready.is_set()

    def call(self, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str] | None = None) -> Call:
        return Call.from_http(headers, body, model_dir=self.served.model_dir, extra=extra)

    async def invoke(self, call: Call, *, stream: bool) -> Answer:
        """Streams go straight to ``handle()``; everything else through the batcher."""
        if not self.ready:
            raise NotReady(self.served.failed or "the model is loading")
        if stream:
            return await self.batcher.call_direct(call)
        return await self.batcher.submit(call)

    async def invoke_whole(self, call: Call) -> Answer:
        """A complete answer: a streamed one is collected (what SageMaker does for ``invoke_endpoint``)."""
        answer = await self.invoke(call, stream=wants_stream(call.body))
        if answer.stream is not None:
            answer.body = b"".join([chunk async for chunk in pump(answer.stream)])
            answer.stream = None
        return answer
