"""From typed requests to responses: rows, one batched generation, rendering, info.

``run`` takes every request of a DJL batch (or of the local endpoint's batcher) and generates all
their rows together. Each request is isolated from its neighbours at every stage: one that fails to
prepare (unknown adapter, prompt too long, a tokenizer that raises), whose rows fail while sampling,
or whose rendering fails gets its own error; if the batched forward pass itself raises, each request
is retried alone so that only the one that causes it fails.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import chat, rag
from .errors import ContextLengthExceeded, GenerationFailed, HandlerError, InvalidRequest, UnknownAdapter, shown
from .generation import ERROR, Row, RowResult, generate
from .loading import LoadedModel
from .schema import GenerateRequest, InfoRequest

log = logging.getLogger("lora_endpoint.handler")


@dataclass
class Prepared:
    """A request with its rows; ``meta`` carries what rendering needs (RAG sources, chat id)."""

    request: Any
    rows: list[Row]
    meta: dict[str, Any] = field(default_factory=dict)


def resolve_adapter(lm: LoadedModel, name: str | None) -> str | None:
    """The adapter a row runs with (None = base); unknown names are a 404 listing what exists."""
    if name is None or name == lm.base_name:
        name = lm.settings.default_adapter or None
        if name is None:
            return None
    if name == lm.merged_adapter:
        return None  # the merged weights are the base now
    if name in lm.failed_adapters:
        raise UnknownAdapter(
            f"adapter {shown(name)} failed to load at start-up and is not served: {lm.failed_adapters[name]}",
            param="adapters",
        )
    if name not in lm.adapters or lm.merged_adapter:
        available = sorted(lm.adapters) if not lm.merged_adapter else [lm.merged_adapter]
        raise UnknownAdapter(
            f"adapter {shown(name)} is not served here; available: {', '.join(available) or 'none (base model only)'}",
            param="adapters",
        )
    return name


def _check_length(lm: LoadedModel, prompt_tokens: int, max_new_tokens: int, field_name: str) -> None:
    if prompt_tokens + max_new_tokens > lm.context_length:
        raise ContextLengthExceeded(
            f"{field_name} has {prompt_tokens} tokens and max_new_tokens is {max_new_tokens}: "
            f"{prompt_tokens + max_new_tokens} exceeds the model's context of {lm.context_length} tokens",
            param=field_name,
        )


@functools.lru_cache(maxsize=64)
def longest_token(tokenizer: Any) -> int:
    """Characters in the tokenizer's longest token: no token covers more of a prompt's text.

    So a prompt of ``n`` characters has at least ``n / longest_token`` tokens, which bounds the cost of
    refusing a prompt that is too long: it is refused from its length, without tokenising it.
    """
    return max((len(token) for token in tokenizer.get_vocab()), default=1) or 1


def tokenize_prompt(lm: LoadedModel, tokenizer: Any, text: str, max_new_tokens: int, field_name: str, *,
                    truncate: int | None = None, add_special_tokens: bool = True) -> tuple[int, ...]:
    """A prompt's token ids, refused (400) when it cannot fit the context; the work is bounded by the
    context: a prompt over ``room * longest_token`` characters is never tokenised."""
    room = lm.context_length - max_new_tokens
    longest = longest_token(tokenizer)
    if truncate is not None:
        text = text[-truncate * longest :]  # only the tail can survive truncation to ``truncate`` tokens
    elif len(text) > max(room, 0) * longest:
        raise ContextLengthExceeded(
            f"{field_name} has {len(text)} characters, more than the {max(room, 0)} tokens that fit: the model's "
            f"context is {lm.context_length} tokens and max_new_tokens is {max_new_tokens}",
            param=field_name,
        )
    ids = tuple(tokenizer(text, add_special_tokens=add_special_tokens).input_ids)
    if truncate is not None:
        ids = ids[-truncate:]
    _check_length(lm, len(ids), max_new_tokens, field_name)
    return ids


def _seeded(params: Any, offset: int) -> Any:
    return params if params.seed is None or offset == 0 else replace(params, seed=params.seed + offset)


def prepare(lm: LoadedModel, request: Any) -> Prepared:
    """Tokenise a request into rows (raises ``HandlerError`` for problems only the model can see)."""
    if isinstance(request, GenerateRequest):
        rows: list[Row] = []
        for index, (prompt, adapter) in enumerate(zip(request.inputs, request.adapters, strict=True)):
            adapter = resolve_adapter(lm, adapter)
            ids = tokenize_prompt(lm, lm.tokenizer_for(adapter), prompt, request.params.max_new_tokens,
                                  f"inputs[{index}]" if request.is_list else "inputs", truncate=request.truncate)
            rows.extend(
                Row(ids, adapter, _seeded(request.params, j), logprobs=request.details)
                for j in range(request.num_return_sequences)
            )
        return Prepared(request, rows)
    if isinstance(request, rag.RagRequest):
        adapter = resolve_adapter(lm, request.adapter)
        budget = lm.context_length - request.params.max_new_tokens
        tokenizer = lm.tokenizer_for(adapter)
        prompt_ids, used, dropped = rag.build_prompt(tokenizer, lm.settings.rag_template, request, budget,
                                                     longest_token(tokenizer))
        return Prepared(request, [Row(tuple(prompt_ids), adapter, request.params, logprobs=request.details)],
                        {"sources": used, "dropped_sources": dropped})
    if isinstance(request, chat.ChatRequest):
        adapter = resolve_adapter(lm, request.model)
        tokenizer = lm.tokenizer_for(adapter)
        text = chat.prompt_text(tokenizer, request.messages)
        ids = tokenize_prompt(lm, tokenizer, text, request.params.max_new_tokens, "messages", add_special_tokens=False)
        rows = [Row(ids, adapter, _seeded(request.params, j)) for j in range(request.n)]
        return Prepared(request, rows, {"id": chat.new_id(), "model": request.model or lm.base_name})
    raise InvalidRequest(f"unsupported request type {type(request).__name__}")


def _details(results: Sequence[RowResult], tokenizer: Any, with_tokens: bool) -> dict[str, Any]:
    first = results[0]
    details: dict[str, Any] = {
        "finish_reason": first.finish_reason,
        "generated_tokens": len(first.token_ids),
        "prompt_tokens": first.prompt_tokens,
    }
    if with_tokens:
        details["tokens"] = [
            {"id": t, "text": tokenizer.decode([t]), "log_prob": lp}
            for t, lp in zip(first.token_ids, first.logprobs, strict=False)
        ]
    return details


def render(lm: LoadedModel, prepared: Prepared, results: Sequence[RowResult]) -> Any:
    """The JSON-ready response for one request."""
    request = prepared.request
    if isinstance(request, chat.ChatRequest):
        return chat.render(request, prepared.meta["model"], results, prepared.meta["id"])
    if isinstance(request, rag.RagRequest):
        text = results[0].text
        if request.return_full_text:
            text = lm.tokenizer.decode(list(prepared.rows[0].prompt_ids), skip_special_tokens=True) + text
        return {"generated_text": text, "sources": prepared.meta["sources"],
                "dropped_sources": prepared.meta["dropped_sources"],
                "details": _details(results, lm.tokenizer, request.details)}
    items = []
    per = request.num_return_sequences
    for index, prompt in enumerate(request.inputs):
        group = results[index * per : (index + 1) * per]
        prefix = prompt if request.return_full_text else ""
        item: dict[str, Any] = {"generated_text": prefix + group[0].text,
                                "details": _details(group, lm.tokenizer, request.details)}
        if per > 1:
            item["sequences"] = [
                {"generated_text": prefix + r.text, "finish_reason": r.finish_reason,
                 "generated_tokens": len(r.token_ids)}
                for r in group
            ]
        items.append(item)
    return items if request.is_list else items[0]


def deadline_for(lm: LoadedModel) -> float | None:
    budget = lm.settings.time_budget_s
    return time.monotonic() + budget if budget > 0 else None


def run(lm: LoadedModel, requests: Sequence[Any]) -> list[Any]:
    """Answer every request; each answer is a JSON-ready object or the ``HandlerError`` for it."""
    answers: list[Any] = [None] * len(requests)
    prepared: list[tuple[int, Prepared]] = []
    for index, request in enumerate(requests):
        try:
            if isinstance(request, InfoRequest):
                answers[index] = info(lm)
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


def info(lm: LoadedModel) -> dict[str, Any]:
    """Model info for callers: the base model's name, context, adapters and limits. Nothing about the
    host (paths, memory, library versions): operators find those in the start-up log."""
    s = lm.settings
    return {
        "base_model": lm.base_name,
        "context_length": lm.context_length,
        "merged_adapter": lm.merged_adapter,
        "default_adapter": s.default_adapter or None,
        "adapters": [
            {"name": a.name, "rank": a.max_rank, "alpha": a.alpha, "target_modules": list(a.target_modules)}
            for a in lm.adapters.values()
        ],
        "failed_adapters": [{"name": name, "reason": reason} for name, reason in lm.failed_adapters.items()],
        "limits": {"max_new_tokens": s.max_new_tokens, "default_max_new_tokens": s.default_max_new_tokens,
                   "max_inputs": s.max_inputs, "max_payload_bytes": s.max_payload_bytes,
                   "max_batch_rows": s.max_batch_rows, "time_budget_s": s.time_budget_s},
    }
