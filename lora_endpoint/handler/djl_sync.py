"""DJL Serving's sync mode (``option.async_mode=false``, ``option.handler=handle_sync``): one call at a
time, several requests per call when ``batch_size`` > 1.

DJL's frontend gives a batch ONE status (djl-serving ``PyPredictor``): for 300 or more it sends the
first item's body to every caller. So a batch always answers 200 with one body per item, a failed
item's body being its own error object; a single request gets its own status. The packages this
project builds run in async mode (``djl_async``); this mode stays for ``option.async_mode=false``.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from lora_endpoint.contract.errors import HandlerError, internal_error_body

from . import service, streaming
from .loading import LoadedModel
from .media import JSON
from .telemetry import Trace

log = logging.getLogger("lora_endpoint.handler")


def error_output(output_cls: Any, err: HandlerError | None = None) -> Any:
    """A whole-call error: the error's status and body (a generic 500 for ``None``)."""
    out = output_cls()
    out.set_code(500 if err is None else err.status)
    out.add_property("Content-Type", JSON)
    if err is not None and err.retry_after:
        out.add_property("Retry-After", str(err.retry_after))
    out.add_as_json(internal_error_body() if err is None else err.body())
    return out


def respond(output_cls: Any, model: LoadedModel, parsed: list[Any], *, batched: bool,
            traces: list[Trace] | None = None) -> Any:
    """The Output for one call's parsed requests (``HandlerError`` items failed to parse); each of
    ``traces`` (one per item) is ended with its item's status."""
    traces = traces if traces is not None else [Trace() for _ in parsed]
    if not batched and not isinstance(parsed[0], HandlerError) and parsed[0].stream:
        try:
            return _stream_output(output_cls, model, parsed[0], traces[0])
        except HandlerError as err:
            model.telemetry.answered(traces[0], err)
            raise
    answers = _answer_all(model, parsed, traces)
    for trace, answer in zip(traces, answers, strict=True):
        model.telemetry.answered(trace, answer)  # a stream's trace ended with its stream: a no-op then
    return _batch_output(output_cls, answers, parsed) if batched else _single_output(output_cls, answers[0], parsed[0])


def _answer_all(model: LoadedModel, parsed: list[Any], traces: list[Trace]) -> list[Any]:
    """Answers in order: errors stay errors, streams in a batch are rendered whole."""
    plain = [(i, p) for i, p in enumerate(parsed) if not isinstance(p, HandlerError) and not p.stream]
    answers: list[Any] = list(parsed)
    results = service.run(model, [p for _, p in plain], [traces[i] for i, _ in plain])
    for (index, _), answer in zip(plain, results, strict=True):
        answers[index] = answer
    for index, request in enumerate(parsed):
        if not isinstance(request, HandlerError) and request.stream:
            try:
                answers[index] = b"".join(streaming.stream(model, request, traces[index]))
            except HandlerError as err:
                answers[index] = err
    return answers


def _payload(answer: Any) -> bytes:
    body = answer.body() if isinstance(answer, HandlerError) else answer
    return bytes(body) if isinstance(body, bytes | bytearray) else json.dumps(body, ensure_ascii=False).encode()


def _single_output(output_cls: Any, answer: Any, request: Any) -> Any:
    if isinstance(answer, HandlerError):
        return error_output(output_cls, answer)
    out = output_cls()
    out.add_property("Content-Type", streaming.stream_type(request) if isinstance(answer, bytes) else JSON)
    out.add(_payload(answer), key="data")
    return out


def _batch_output(output_cls: Any, answers: list[Any], parsed: list[Any]) -> Any:
    """One Output for a DJL batch, exactly one content entry per item (``batch_{i}.data``).

    DJL's frontend gives the whole batch the Output's status - and a status of 300 or more sends the
    first item's body to every caller - so a batch is always 200 and a failed item's body is its own
    error object (``code``, ``type``, ``message``). Headers are shared by the batch too: the
    Content-Type is a stream's type only when every item is such a stream, else JSON.
    """
    out = output_cls()
    types = {streaming.stream_type(p) if isinstance(a, bytes) else JSON for a, p in zip(answers, parsed, strict=True)}
    out.add_property("Content-Type", types.pop() if len(types) == 1 else JSON)
    for index, answer in enumerate(answers):
        out.add(_payload(answer), key="data", batch_index=index)
    return out


def _stream_output(output_cls: Any, model: LoadedModel, request: Any, trace: Trace) -> Any:
    chunks = streaming.stream(model, request, trace)  # preparation and prefill errors raise here, before any byte
    out = output_cls()
    out.add_property("Content-Type", streaming.stream_type(request))
    try:
        out.add_stream_content(chunks, output_formatter=_identity)
    except TypeError:  # older djl_python: add_stream_content(stream_content) only
        out.add_stream_content(chunks)
    return out


def _identity(chunk: Any) -> Any:
    return chunk
