"""Streaming one request: JSON lines (generate, RAG) or server-sent events (chat), ending cleanly.

The prefill (tokenising, the first forward pass and the first token) runs before ``stream`` returns, so
every error up to the first byte still gets a real status. After the first byte an error cannot change
the status any more: the stream then ends with one error record in its own format - a JSON line with an
``error`` object (and ``details.finish_reason`` ``error``, which LMI clients look for), or an SSE event
with the ``error`` object followed by ``data: [DONE]`` - never raw exception text, never a silent cut.
Closing the iterator (the client went away) stops generation at the next token.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Generator, Iterator
from typing import Any

from . import chat
from .errors import GenerationFailed, HandlerError, InvalidRequest
from .generation import ERROR, Delta, Row, RowResult, decode
from .loading import LoadedModel
from .media import EVENT_STREAM, JSON_LINES
from .schema import GenerateRequest
from .service import Prepared, deadline_for, prepare, render

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
    if isinstance(request, GenerateRequest) and (request.is_list or request.num_return_sequences > 1):
        raise InvalidRequest("stream supports a single input with num_return_sequences 1", param="stream")
    prepared = prepare(lm, request)
    steps = _decode_locked(lm, prepared.rows)
    try:
        first = next(steps, None)
    except HandlerError:
        steps.close()
        raise
    except Exception:
        steps.close()
        log.exception("prefill failed")
        raise GenerationFailed() from None
    if first is not None and _failed(first):  # the first token failed: no byte is out, so a real status
        steps.close()
        raise GenerationFailed()
    rest: Iterator[list[Delta]] = itertools.chain([] if first is None else [first], steps)
    body = _chat_events(lm, prepared, rest) if isinstance(request, chat.ChatRequest) else _lines(lm, prepared, rest)
    return ending_cleanly(body, stream_type(request), steps)


def _decode_locked(lm: LoadedModel, rows: list[Row]) -> Generator[list[Delta], None, None]:
    """``decode`` with the model lock held for each step, never across a yield: a stream that is
    abandoned without being closed (a caller that never reads it) cannot hold the model, and other
    requests get the model between two of its tokens."""
    steps = decode(lm, rows, deadline=deadline_for(lm))
    try:
        while True:
            with lm.lock:
                step = next(steps, None)
            if step is None:
                return
            yield step
    finally:
        steps.close()


def _failed(step: list[Delta]) -> bool:
    return any(delta.finish_reason == ERROR for delta in step)


def _lines(lm: LoadedModel, prepared: Prepared, steps: Iterator[list[Delta]]) -> Iterator[bytes]:
    result = RowResult(prompt_tokens=len(prepared.rows[0].prompt_ids))
    for step in steps:
        if _failed(step):
            raise GenerationFailed()
        delta = step[0]
        result.text += delta.text
        result.token_ids.append(delta.token_id)
        line: dict[str, Any] = {"token": {"id": delta.token_id, "text": delta.text, "log_prob": delta.logprob}}
        if delta.finish_reason:
            result.finish_reason = delta.finish_reason
            line.update(render(lm, prepared, [result]))
        yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


def _chat_events(lm: LoadedModel, prepared: Prepared, steps: Iterator[list[Delta]]) -> Iterator[bytes]:
    request: chat.ChatRequest = prepared.request
    cid, model, created = prepared.meta["id"], prepared.meta["model"], int(time.time())
    n = len(prepared.rows)
    yield chat.chunk(cid, created, model, [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(n)
    ])
    completion = 0
    for step in steps:
        if _failed(step):
            raise GenerationFailed()
        choices = []
        for delta in step:
            completion += 1
            if delta.text or delta.finish_reason:
                choices.append({
                    "index": delta.row,
                    "delta": {"content": delta.text} if delta.text else {},
                    "finish_reason": chat.FINISH.get(delta.finish_reason) if delta.finish_reason else None,
                })
        if choices:
            yield chat.chunk(cid, created, model, choices)
    if request.include_usage:
        prompt = len(prepared.rows[0].prompt_ids)
        yield chat.chunk(cid, created, model, [], usage={
            "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    yield chat.sse("[DONE]")
