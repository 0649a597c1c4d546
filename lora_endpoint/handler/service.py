"""From typed requests to responses: each request's rows through the engine, then rendering.

``run`` answers every request of a call (a DJL batch, a toolkit request). Each request is isolated
from its neighbours at every stage: one that fails to prepare (unknown adapter, prompt too long, a
tokenizer that raises), whose rows fail in the engine, or whose rendering fails gets its own error.
The request kinds do the shape-specific work (``kinds``); this module knows only rows and results.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from lora_endpoint.contract.errors import GenerationFailed, HandlerError

from . import kinds
from .engine import Handle, engine_for
from .generation import ERROR, RowResult
from .loading import LoadedModel
from .registry import Lease
from .rows import Prepared
from .telemetry import Trace

log = logging.getLogger("lora_endpoint.handler")


def prepare(lm: LoadedModel, request: Any) -> Prepared:
    """Tokenise a request into rows (raises ``HandlerError`` for problems only the model can see)."""
    return kinds.module(request).to_rows(lm, request)


def render(lm: LoadedModel, prepared: Prepared, results: Sequence[RowResult]) -> Any:
    """The JSON-ready response for one request."""
    return kinds.module(prepared.request).render(lm, prepared, results)


def deadline_for(lm: LoadedModel) -> float | None:
    """When the request's time budget ends: counted from when the engine can take it (vLLM's starts in
    about a minute on a CPU, normally during the init call)."""
    engine_for(lm)
    budget = lm.settings.time_budget_s
    return time.monotonic() + budget if budget > 0 else None


def hold(lm: LoadedModel, prepared: Prepared, deadline: float | None) -> Lease:
    """Hold the adapters of ``prepared``'s rows (in memory, on the device) for the request: blocks while
    they are read or wait for a device slot, so callers on an event loop run it on a worker thread."""
    if lm.registry is None:
        return Lease(None, ())
    return lm.registry.acquire([r.adapter for r in prepared.rows if r.adapter is not None], deadline=deadline)


def submit(lm: LoadedModel, prepared: Prepared, lease: Lease, *, deadline: float | None,
           loop: asyncio.AbstractEventLoop | None = None, trace: Trace | None = None) -> Handle:
    """Submit the rows; the lease ends when the engine is done with them (or now, if submitting fails).
    ``trace`` gets the handle, whose counters its record reads."""
    try:
        handle = engine_for(lm).submit(prepared.rows, deadline=deadline, loop=loop, on_release=lease.release)
    except BaseException:
        lease.release()
        raise
    if trace is not None:
        trace.handle = handle
    return handle


def prepare_held(lm: LoadedModel, request: Any, deadline: float | None,
                 trace: Trace | None = None) -> tuple[Prepared, Lease]:
    """``prepare`` then ``hold``: the blocking part of a request before the engine."""
    prepared = prepare(lm, request)
    if trace is not None:
        trace.prepared(lm, prepared)
    return prepared, hold(lm, prepared, deadline)


def run(lm: LoadedModel, requests: Sequence[Any], traces: Sequence[Trace | None] | None = None) -> list[Any]:
    """Answer every request; each answer is a JSON-ready object or the ``HandlerError`` for it.

    Every request goes to the engine on its own (the engine batches them with whatever else is
    running), so each gets its own answer or error whatever its neighbours in a DJL batch do.
    ``traces`` (one per request) are filled in; the caller ends them once it knows each status.
    """
    answers: list[Any] = [None] * len(requests)
    submitted: list[tuple[int, Prepared, Any]] = []
    deadline = deadline_for(lm)  # these requests arrived together: now
    for index, request in enumerate(requests):
        trace = traces[index] if traces is not None else None
        try:
            if request.kind == "info":
                answers[index] = kinds.info.render(lm)
                continue
            prepared, lease = prepare_held(lm, request, deadline, trace)
            handle = submit(lm, prepared, lease, deadline=deadline, trace=trace)
            submitted.append((index, prepared, handle))
        except HandlerError as err:
            answers[index] = err
        except Exception:  # a tokenizer or template that raises: this request only
            log.exception("preparing request %d of %d failed", index, len(requests))
            answers[index] = GenerationFailed()
    for index, prepared, handle in submitted:
        try:
            results = handle.results()
            failed = any(r.finish_reason == ERROR for r in results)
            answers[index] = GenerationFailed() if failed else render(lm, prepared, results)
        except HandlerError as err:
            answers[index] = err
        except Exception:
            log.exception("rendering request %d of %d failed", index, len(requests))
            answers[index] = GenerationFailed()
    return answers


async def arun(lm: LoadedModel, request: Any, trace: Trace | None = None) -> Any:
    """One request on the event loop (DJL's async mode): its answer, or the ``HandlerError`` raised.
    Tokenising runs on a worker thread; the engine's steps arrive on this loop."""
    if request.kind == "info":
        return kinds.info.render(lm)
    deadline = deadline_for(lm)
    prepared, lease = await asyncio.to_thread(prepare_held, lm, request, deadline, trace)
    handle = submit(lm, prepared, lease, deadline=deadline, loop=asyncio.get_running_loop(), trace=trace)
    results = await handle.aresults()
    if any(r.finish_reason == ERROR for r in results):
        raise GenerationFailed()
    return render(lm, prepared, results)
