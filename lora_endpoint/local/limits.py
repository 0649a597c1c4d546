"""Request bodies within bounds before any route sees them: a size cap and a read deadline (ASGI).

A body whose ``Content-Length`` is over the cap is refused (413) before a byte of it is read; a chunked
body is refused as soon as it passes the cap; a client that sends its headers and then too little of
its body, too slowly, gets a 408 when the deadline passes, and its connection is closed. What reaches
the app is the whole body, already read. Every refusal is the project's JSON error body.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from lora_endpoint.contract.errors import error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# SageMaker's request payload limit: the runtime refuses anything bigger before the container sees it.
DEFAULT_MAX_BODY_BYTES = 6 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 30.0


async def send_error(send: Send, status: int, error_type: str, message: str) -> None:
    """A complete JSON error response that also closes the connection."""
    payload = json.dumps(error_body(status, error_type, message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})


class BodyLimits:
    """Wraps an ASGI app: reads each HTTP request's body within ``max_bytes`` and ``timeout_s``."""

    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                await send_error(send, 400, "invalid_request", "Content-Length is not a number")
                return
            if int(declared) > self.max_bytes:
                await send_error(send, 413, "payload_too_large",
                                 f"request body is {int(declared)} bytes; the limit is {self.max_bytes}")
                return
        body = await self._read(receive, send)
        if body is None:
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the app expects

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once an error has been sent (or the client left)."""
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                await send_error(send, 408, "request_timeout",
                                 f"the request body did not arrive within {self.timeout_s:g} s")
                return None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await send_error(send, 413, "payload_too_large",
                                 f"request body is over the limit of {self.max_bytes} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
