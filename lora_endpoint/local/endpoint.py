"""What every route shares: the served model, its frontend (how one request reaches ``handle()``), and
the drain at shutdown.

The frontend is DJL's, emulated for the package's mode: in async mode (``async_frontend``) every
request is its own ``await handle()`` on the server's loop; in sync mode (``batcher``) requests are
gathered into DJL batches for one ``handle()`` call on one worker thread.

Shutdown, in order: ``begin_drain`` (uvicorn has stopped accepting connections) makes new requests on
open connections a 503 ``service_unavailable`` and starts the drain clock; requests already queued or
running are answered as usual until ``drain_timeout_s`` is up; then ``expired`` is set: requests still
waiting get a JSON 503, and running streams end with an error record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi.responses import StreamingResponse

from lora_endpoint.contract.errors import HandlerError, ServiceUnavailable
from lora_endpoint.handler.body import parse_json

from . import DEFAULT_ENDPOINT_NAME, DEFAULT_VARIANT
from .djl_io import JSON, Answer, Call
from .package import ServedModel
from .streaming import close_stream, pump_answer

RETRY_AFTER_S = 5
INFO_BODY = b'{"task": "info"}'


class ClosingStreamingResponse(StreamingResponse):
    """Starlette's streaming response, closing its body when the response ends in any way. Starlette
    cancels the writer when the client disconnects and may leave the body iterator suspended; closing
    it here is what stops the handler's generation at once."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await close_stream(self.body_iterator)


class NotReady(Exception):
    """The model is still loading (or failed to load)."""


def wants_stream(body: bytes) -> bool:
    """True when the body is a JSON object with ``"stream": true``. The body is read with the handler's
    own bounded parser, so nothing here can fail on it; anything else is the handler's call."""
    if b"stream" not in body:
        return False
    try:
        data = parse_json(body, max_bytes=len(body))
    except HandlerError:
        return False
    return data.get("stream") is True


def unavailable_answer(message: str) -> Answer:
    """A 503 as the handler would write it, with a ``Retry-After``."""
    err = ServiceUnavailable(message)
    return Answer(err.status, {"Content-Type": JSON, "Retry-After": str(RETRY_AFTER_S)},
                  json.dumps(err.body()).encode())


class Frontend(Protocol):
    """How requests reach ``handle()``: ``start`` it in the event loop, ``drain`` it at shutdown."""

    def start(self) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...

    async def answer(self, call: Call, *, stream: bool) -> Answer: ...

    async def call(self, function: Callable[[Any], Any], inputs: Any, what: str) -> Answer:
        """Another function of the entry module (``register_adapter`` ...) with a ready-made Input, run where
        the mode runs ``handle`` (the loop, or the worker thread) and read as its Output would be."""
        ...

    def report(self) -> dict[str, Any] | None: ...


@dataclass
class EndpointState:
    served: ServedModel
    frontend: Frontend
    endpoint_name: str = DEFAULT_ENDPOINT_NAME
    variant: str = DEFAULT_VARIANT
    drain_timeout_s: float = 60.0
    draining: bool = False
    expired: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def ready(self) -> bool:
        return self.served.ready.is_set()

    def call(self, headers: Mapping[str, str], body: bytes, extra: Mapping[str, str] | None = None) -> Call:
        return Call.from_http(headers, body, model_dir=self.served.model_dir, extra=extra)

    def begin_drain(self) -> None:
        """Stop taking requests; ``expired`` is set once the drain time is up."""
        if self.draining:
            return
        self.draining = True
        asyncio.get_running_loop().call_later(self.drain_timeout_s, self.expired.set)

    async def invoke(self, call: Call, *, stream: bool) -> Answer:
        """One request through the frontend (``stream``: the body asks to stream)."""
        if not self.ready:
            raise NotReady(self.served.failed or "the model is loading")
        if self.draining:
            return unavailable_answer("the endpoint is shutting down; retry")
        return await self._until_expired(self.frontend.answer(call, stream=stream))

    async def _until_expired(self, work: Awaitable[Answer]) -> Answer:
        """``work``'s answer, or a 503 if the drain time runs out first."""
        task = asyncio.ensure_future(work)
        expiry = asyncio.ensure_future(self.expired.wait())
        try:
            done, _ = await asyncio.wait({task, expiry}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # this request was cancelled: so is its work (the engine drops the rows)
            task.cancel()
            raise
        finally:
            expiry.cancel()
        if task in done:
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return unavailable_answer(f"the endpoint is shutting down and could not answer within the "
                                  f"{self.drain_timeout_s:g} s drain time; retry")

    async def model_info(self) -> Answer:
        """The handler's answer to ``{"task": "info"}`` (``NotReady`` before the model has loaded)."""
        return await self.invoke_whole(self.call({"Content-Type": JSON}, INFO_BODY))

    async def invoke_whole(self, call: Call) -> Answer:
        """A complete answer: a streamed one is collected (what SageMaker does for ``invoke_endpoint``)."""
        answer = await self.invoke(call, stream=wants_stream(call.body))
        if answer.stream is not None:
            answer.body = b"".join([chunk async for chunk in pump_answer(answer, self.expired)])
            answer.stream = None
        return answer
