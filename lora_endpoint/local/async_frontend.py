"""DJL's async mode, emulated: one ``await handle(Input)`` per request, on the server's event loop.

What djl-serving does with ``option.async_mode=true``, read from its source: ``python_async_engine.py``
awaits the handler and sends what it returns; the Java side reads it in ``AsyncRequestManager`` and
``Request.addResponse``; ``InferenceRequestHandler.sendOutput`` writes the HTTP response.

- ``None`` is a 204. An exception out of ``handle`` is a 424 (507 for an out-of-memory error), and so is
  an answer that is neither an Output nor an async generator of them. An Output whose own ``code`` is
  not 200 is answered with that code and the frontend's body ``{"code", "message"}``.
- Otherwise an Output's ``content[0]`` is a record (``Output.binary_encode``): its ``data`` is appended
  to the response and ``last`` ends it; a record with empty data and ``last`` false adds nothing. A
  ``code`` makes that the status and the body ``{"code": <code>, "error": <error>}``, and ends the
  response. Every such Output's properties become response headers.
- The status and headers go out with the first chunk: when it is also the last, as a plain response;
  otherwise chunked, each chunk as the generator yields it.

Where DJL would leave a request unanswered (a generator that raises, or ends without its last record,
a record it cannot read), the client would wait for the frontend's chunk read timeout and then lose
the connection; locally that is a logged error and a JSON 500, or mid-stream the stream's error record.
One difference on purpose: a client that disconnects closes the handler's generator here (the engine
drops the rows); DJL's frontend does not tell the Python side, which runs the request to its end.
"""

from __future__ import annotations

import json
import logging
import struct
import types
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from lora_endpoint.contract.errors import internal_error_body

from .djl_io import JSON, Answer, Call, build_input, content_pairs, ensure_djl_python
from .package import ServedModel
from .streaming import StreamFailed, close_stream

log = logging.getLogger("lora_endpoint.local")

# python_async_engine.invoke_handler: these failures are answered 507, any other exception 424
_MEMORY_ERRORS = ("OutOfMemoryError", "MemoryError")
_MEMORY_TEXT = ("CUDA error: out of memory", "No available memory for the cache blocks")
_UNANSWERED = ("deployed, DJL's frontend would leave this request waiting until its chunk read timeout and then "
               "drop the connection")


class MalformedRecord(Exception):
    """An Output the frontend cannot read (no content, a record that does not decode, a bad code)."""


def read_record(data: bytes) -> dict[str, str]:
    """A ``binary_encode`` record as the frontend reads it: a short count, then key/value pairs, each a
    big-endian int length and UTF-8 bytes; a null key or value (length -1) is refused, as Java does."""
    try:
        (count,) = struct.unpack_from(">h", data, 0)
        offset, record = 2, {}
        for _ in range(count):
            pair: list[str] = []
            for _ in range(2):
                (length,) = struct.unpack_from(">i", data, offset)
                offset += 4
                if length < 0 or offset + length > len(data):
                    raise MalformedRecord(f"record field of length {length} at byte {offset}")
                pair.append(data[offset : offset + length].decode("utf-8"))
                offset += length
            record[pair[0]] = pair[1]
        return record
    except (struct.error, UnicodeDecodeError) as err:
        raise MalformedRecord(f"not a binary_encode record: {err}") from None


def frontend_error(code: int, message: str) -> Answer:
    """An error the frontend writes itself (the Gson of ``Output(code, "Async Inference Failure ...")``)."""
    body = {"code": code, "message": f"Async Inference Failure {message}"}
    return Answer(code, {"Content-Type": JSON}, json.dumps(body).encode())


def unanswered(reason: str) -> Answer:
    log.error("%s: %s; answering 500 here", reason, _UNANSWERED)
    return Answer(500, {"Content-Type": JSON}, json.dumps(internal_error_body()).encode())


class Response:
    """One request's response as ``Request.java`` builds it from the handler's Outputs."""

    def __init__(self) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.ended = False
        self._data: str | None = None  # kept across records, as Java keeps nextToken
        self._last = False

    def add(self, output: Any) -> bytes | None:
        """The bytes ``output`` appends to the response, or None when it appends nothing."""
        code = int(getattr(output, "code", 200) or 200)
        if code != 200:  # AsyncRequestManager.sendErrorResponse: its properties are dropped
            self.status, self.ended = code, True
            return frontend_error(code, str(getattr(output, "message", ""))).body
        self.headers.update({str(k): str(v) for k, v in dict(getattr(output, "properties", {}) or {}).items()})
        pairs = content_pairs(getattr(output, "content", []))
        if not pairs:
            raise MalformedRecord("an Output without content")
        record = read_record(pairs[0][1])
        self._data = record.get("data", self._data)
        if "last" in record:
            self._last = record["last"].lower() == "true"  # Python writes str(True): "True"
        if not self._data and not self._last:
            return None  # the frontend returns nothing until there is data or the end
        if "code" in record:
            try:
                status = int(record["code"])
            except ValueError:
                raise MalformedRecord(f"record code {record['code']!r} is not an integer") from None
            self.status, self.ended = status, True
            error = {"code": status, **({"error": record["error"]} if "error" in record else {})}
            return json.dumps(error, ensure_ascii=False).encode()
        self.ended = self._last
        return (self._data or "").encode("utf-8")


async def answer(served: ServedModel, call: Call) -> Answer:
    """One request through the async ``handle``, answered as DJL's frontend answers it."""
    return await invoke(served.handle, build_input(served.djl, [call]), f"request {call.properties.get('requestId')}")


async def invoke(function: Callable[[Any], Any], inputs: Any, what: str) -> Answer:
    """``await function(inputs)`` (``handle``, or an adapter function such as ``register_adapter``: DJL's
    async engine invokes every one alike), answered as the frontend answers it."""
    name = f"{getattr(function, '__name__', 'handle')}()"
    try:
        result = await function(inputs)
    except Exception as err:
        log.exception("%s raised for %s", name, what)
        if type(err).__name__ in _MEMORY_ERRORS or any(text in str(err) for text in _MEMORY_TEXT):
            return frontend_error(507, str(err))
        return frontend_error(424, "service.invoke_handler_async() failure")
    if result is None:
        return Answer(204)
    if isinstance(result, types.AsyncGeneratorType):  # the type DJL checks for
        return await _first_chunk(result, Response())
    if not isinstance(result, ensure_djl_python().Output):  # the class the handler imports now, as DJL checks
        log.error("%s returned %s, not an Output or an async generator", name, type(result).__name__)
        return frontend_error(424, "prediction failure")
    response = Response()
    try:
        chunk = response.add(result)
    except MalformedRecord as err:
        return unanswered(f"{name} answered an Output DJL cannot read ({err})")
    if chunk is None or not response.ended:
        return unanswered(f"{name} answered one Output that does not end the response (last is false)")
    return Answer(response.status, response.headers, chunk)


async def _first_chunk(outputs: AsyncGenerator[Any, None], response: Response) -> Answer:
    """Read Outputs until the first chunk: a whole answer, or the status and headers of a stream."""
    handed_on = False
    try:
        async for output in outputs:
            chunk = response.add(output)
            if chunk is None:
                continue
            if response.ended:
                return Answer(response.status, dict(response.headers), chunk)
            handed_on = True
            return Answer(response.status, dict(response.headers), stream=_chunks(chunk, outputs, response))
        return unanswered("handle()'s generator ended without a last record")
    except MalformedRecord as err:
        return unanswered(f"handle() yielded an Output DJL cannot read ({err})")
    except Exception:
        log.exception("handle()'s generator raised before its first chunk")
        return unanswered("handle()'s generator raised")
    finally:
        if not handed_on:
            await close_stream(outputs)


async def _chunks(first: bytes, outputs: AsyncGenerator[Any, None], response: Response) -> AsyncIterator[bytes]:
    """The rest of a stream, chunk by chunk; closing this closes the handler's generator."""
    try:
        yield first
        async for output in outputs:
            chunk = response.add(output)
            if chunk:
                yield chunk
            if response.ended:
                return
        raise StreamFailed("handle()'s generator ended without a last record")
    finally:
        await close_stream(outputs)


class AsyncFrontend:
    """What the endpoint calls in async mode: no queue, no batches - every request is its own call,
    and the handler's engine batches them."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served

    def start(self) -> None:
        """Nothing to start: requests run on the server's loop."""

    async def drain(self, timeout_s: float) -> None:
        """Nothing queued here: uvicorn has waited for the requests in flight."""

    async def answer(self, call: Call, *, stream: bool) -> Answer:
        return await answer(self.served, call)

    async def call(self, function: Callable[[Any], Any], inputs: Any, what: str) -> Answer:
        """Another entry function (``register_adapter`` ...), awaited on the loop like ``handle``."""
        return await invoke(function, inputs, what)

    def report(self) -> dict[str, Any] | None:
        """Nothing of its own to count (the engine's counters are the served model's)."""
        return None
