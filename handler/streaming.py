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

import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any

from . import chat, kinds
from .engine import engine_for
from .errors import GenerationFailed, HandlerError
from .generation import ERROR, Delta
from .loading import LoadedModel
from .media import EVENT_STREAM, JSON_LINES
from .service import deadline_for, prepare

log = logging.getLogger("lora_endpoint.handler")


def stream_type(request: Any) -> str:
    """The media type a request streams in."""
    return EVENT_STREAM if getattr(request, "kind", "") == "chat" else JSON_LINES


def error_record(err: HandlerError, media: str) -> bytes:
    """The last chunk of a stream that failed after its first byte, in the stream's own format."""
    if media.split(";")[0].strip().lower() == EVENT_STREAM:
        return chat.sse(err.body()) + chat.sse("[DONE]")
    return (json.dumps({**err.body(), "details": {"finish_reason": "error"}}) + "\n").encode()


def ending_cleanly(chunks: Iterator[bytes], media: str, *also: Iterator[Any]) -> Iterator[bytes]:
    """``chunks``, with any failure turned into the stream's error record. However it ends (or is
    closed), ``chunks`` and the iterators in ``also`` are closed: the decode loop stops there."""
    try:
        yield from chunks
    except HandlerError as err:
        yield error_record(err, media)
    except Exception:
        log.exception("stream failed after its first byte")
        yield error_record(GenerationFailed(), media)
    finally:
        for iterator in (chunks, *also):
            close = getattr(iterator, "close", None)
            if callable(close):
                close()


def stream(lm: LoadedModel, request: Any) -> Iterator[bytes]:
    """Prepare and prefill ``request`` now (errors raise here), then stream the rest lazily."""
    prepared = prepare(lm, request)
    steps = engine_for(lm).submit(prepared.rows, deadline=deadline_for(lm)).steps()
    try:
        first = next(steps, None)  # the prefill and the first token
    except BaseException:
        steps.close()
        raise
    if first is not None and _failed(first):  # the first token failed: no byte is out, so a real status
        steps.close()
        raise GenerationFailed()
    rest: Iterator[list[Delta]] = itertools.chain([] if first is None else [first], steps)
    body = kinds.module(request).render_stream(lm, prepared, rest)
    return ending_cleanly(body, stream_type(request), steps)


def _failed(step: list[Delta]) -> bool:
    return any(delta.finish_reason == ERROR for delta in step)
