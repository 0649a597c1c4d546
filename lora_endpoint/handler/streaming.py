"""Streaming one request: JSON lines (generate, RAG) or server-sent events (chat), ending cleanly.

The prefill (tokenising, the engine's first pass over the prompt and the first token) runs before
``stream`` returns, so every error up to the first byte still gets a real status. After the first
byte an error cannot change the status any more: the stream then ends with one error record in its
own format - a JSON line with an ``error`` object (and ``details.finish_reason`` ``error``, which LMI
clients look for), or an SSE event with the ``error`` object followed by ``data: [DONE]`` - never raw
exception text, never a silent cut.
Closing the iterator (the client went away) stops generation at the next token.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

from lora_endpoint.contract.errors import GenerationFailed, HandlerError

from . import chat, kinds
from .generation import ERROR, Delta
from .loading import LoadedModel
from .media import EVENT_STREAM, JSON_LINES
from .service import deadline_for, prepare_held, submit
from .telemetry import Trace

log = logging.getLogger("lora_endpoint.handler")


def stream_type(request: Any) -> str:
    """The media type a request streams in."""
    return EVENT_STREAM if getattr(request, "kind", "") == "chat" else JSON_LINES


def error_record(err: HandlerError, media: str) -> bytes:
    """The last chunk of a stream that failed after its first byte, in the stream's own format."""
    if media.split(";")[0].strip().lower() == EVENT_STREAM:
        return chat.sse(err.body()) + chat.sse("[DONE]")
    return (json.dumps({**err.body(), "details": {"finish_reason": "error"}}) + "\n").encode()


def stream(lm: LoadedModel, request: Any, trace: Trace | None = None) -> Iterator[bytes]:
    """Prepare and prefill ``request`` now (errors raise here), then stream the rest lazily. ``trace``
    is filled in, and ended when the stream ends (the caller ends it if this raises)."""
    deadline = deadline_for(lm)
    prepared, lease = prepare_held(lm, request, deadline, trace)
    steps = submit(lm, prepared, lease, deadline=deadline, trace=trace).steps()
    try:
        first = _first(next(steps, None))  # the prefill and the first token
    except BaseException:
        steps.close()
        raise
    return _rendered(kinds.module(request).stream_renderer(lm, prepared), first, steps, stream_type(request),
                     _Ending(lm, trace))


class _Ending:
    """Ends a stream's trace: 200 (the status was sent with the first byte), with the error type of an
    error record, if one ended the stream."""

    def __init__(self, lm: LoadedModel, trace: Trace | None) -> None:
        self.lm, self.trace = lm, trace
        self.error: str | None = None

    def __call__(self) -> None:
        if self.trace is not None:
            self.lm.telemetry.done(self.trace, 200, self.error)


def _rendered(renderer: Any, first: list[Delta] | None, steps: Generator[list[Delta], None, None],
              media: str, ending: _Ending) -> Iterator[bytes]:
    try:
        yield from renderer.start()
        for step in itertools.chain([] if first is None else [first], steps):
            yield from renderer.step(step)
        yield from renderer.end()
    except HandlerError as err:
        ending.error = err.code
        yield error_record(err, media)
    except Exception:
        log.exception("stream failed after its first byte")
        ending.error = GenerationFailed.code
        yield error_record(GenerationFailed(), media)
    finally:
        steps.close()  # the client went away, or the stream ended: the engine drops the rows
        ending()


async def astream(lm: LoadedModel, request: Any, trace: Trace | None = None) -> AsyncIterator[bytes]:
    """``stream`` for the event loop (DJL's async mode): tokenising runs on a worker thread, and the
    engine's steps arrive on this loop. Prefill errors raise on the first ``__anext__``."""
    deadline = deadline_for(lm)
    prepared, lease = await asyncio.to_thread(prepare_held, lm, request, deadline, trace)
    steps = submit(lm, prepared, lease, deadline=deadline, loop=asyncio.get_running_loop(), trace=trace).asteps()
    try:
        first = _first(await anext(steps, None))
    except BaseException:
        await steps.aclose()
        raise
    return _arendered(kinds.module(request).stream_renderer(lm, prepared), first, steps, stream_type(request),
                      _Ending(lm, trace))


async def _arendered(renderer: Any, first: list[Delta] | None, steps: AsyncGenerator[list[Delta], None],
                     media: str, ending: _Ending) -> AsyncIterator[bytes]:
    try:
        for chunk in renderer.start():
            yield chunk
        if first is not None:
            for chunk in renderer.step(first):
                yield chunk
        async for step in steps:
            for chunk in renderer.step(step):
                yield chunk
        for chunk in renderer.end():
            yield chunk
    except HandlerError as err:
        ending.error = err.code
        yield error_record(err, media)
    except Exception:
        log.exception("stream failed after its first byte")
        ending.error = GenerationFailed.code
        yield error_record(GenerationFailed(), media)
    finally:
        await steps.aclose()
        ending()


def _first(step: list[Delta] | None) -> list[Delta] | None:
    """The first step; one that failed is an error before any byte is out (so a real status)."""
    if step is not None and _failed(step):
        raise GenerationFailed()
    return step


def _failed(step: list[Delta]) -> bool:
    return any(delta.finish_reason == ERROR for delta in step)
