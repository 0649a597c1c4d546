"""From typed requests to responses: each request's rows, one batched generation, rendering.

``run`` takes every request of a DJL batch (or of the local endpoint's batcher) and generates all
their rows together. Each request is isolated from its neighbours at every stage: one that fails to
prepare (unknown adapter, prompt too long, a tokenizer that raises), whose rows fail while sampling,
or whose rendering fails gets its own error; if the batched forward pass itself raises, each request
is retried alone so that only the one that causes it fails. The request kinds do the shape-specific
work (``kinds``); this module knows only rows and results.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from . import kinds
from .errors import GenerationFailed, HandlerError
from .generation import ERROR, RowResult, generate
from .loading import LoadedModel
from .rows import Prepared

log = logging.getLogger("lora_endpoint.handler")


def prepare(lm: LoadedModel, request: Any) -> Prepared:
    """Tokenise a request into rows (raises ``HandlerError`` for problems only the model can see)."""
    return kinds.module(request).to_rows(lm, request)


def render(lm: LoadedModel, prepared: Prepared, results: Sequence[RowResult]) -> Any:
    """The JSON-ready response for one request."""
    return kinds.module(prepared.request).render(lm, prepared, results)


def deadline_for(lm: LoadedModel) -> float | None:
    budget = lm.settings.time_budget_s
    return time.monotonic() + budget if budget > 0 else None


def run(lm: LoadedModel, requests: Sequence[Any]) -> list[Any]:
    """Answer every request; each answer is a JSON-ready object or the ``HandlerError`` for it."""
    answers: list[Any] = [None] * len(requests)
    prepared: list[tuple[int, Prepared]] = []
    for index, request in enumerate(requests):
        try:
            if request.kind == "info":
                answers[index] = kinds.info.render(lm)
            else:
                prepared.append((index, prepare(lm, request)))
        except HandlerError as err:
            answers[index] = err
        except Exception:  # a tokenizer or template that raises: this request only
            log.exception("preparing request %d of %d failed", index, len(requests))
            answers[index] = GenerationFailed()
    for (index, p), results in zip(prepared, _generate_isolated(lm, [p for _, p in prepared]), strict=True):
        if isinstance(results, HandlerError):
            answers[index] = results
            continue
        try:
            answers[index] = render(lm, p, results)
        except Exception:
            log.exception("rendering request %d of %d failed", index, len(requests))
            answers[index] = GenerationFailed()
    return answers


def _generate_isolated(lm: LoadedModel, prepared: Sequence[Prepared]) -> list[list[RowResult] | HandlerError]:
    """Every request's row results; a failed row fails its own request only. A batch whose forward pass
    raises is run again one request at a time, so the request that causes it is the only one to fail."""
    rows = [row for p in prepared for row in p.rows]
    if not rows:
        return [[] for _ in prepared]
    try:
        deadline = deadline_for(lm)
        limit = lm.settings.max_batch_rows
        with lm.lock:
            results = [r for start in range(0, len(rows), limit)
                       for r in generate(lm, rows[start : start + limit], deadline=deadline)]
    except Exception:
        if len(prepared) == 1:
            log.exception("generation failed")
            return [GenerationFailed()]
        log.exception("batched generation of %d requests failed; running each alone", len(prepared))
        return [_generate_isolated(lm, [p])[0] for p in prepared]
    out: list[list[RowResult] | HandlerError] = []
    offset = 0
    for p in prepared:
        mine = results[offset : offset + len(p.rows)]
        offset += len(p.rows)
        out.append(GenerationFailed() if any(r.finish_reason == ERROR for r in mine) else mine)
    return out
