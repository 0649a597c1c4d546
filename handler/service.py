"""From typed requests to responses: rows, one batched generation, rendering, streaming, info.

``run`` takes every request of a DJL batch (or of the local endpoint's batcher) and generates all
their rows together; a request that fails to prepare (unknown adapter, prompt too long) gets its own
error without failing its neighbours.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import __version__, chat, rag
from .errors import ContextLengthExceeded, HandlerError, InvalidRequest, UnknownAdapter
from .generation import Delta, Row, RowResult, decode, generate
from .loading import LoadedModel
from .schema import GenerateRequest, InfoRequest


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
            f"adapter {name!r} failed to load at start-up and is not served: {lm.failed_adapters[name]}",
            param="adapters",
        )
    if name not in lm.adapters or lm.merged_adapter:
        available = sorted(lm.adapters) if not lm.merged_adapter else [lm.merged_adapter]
        raise UnknownAdapter(
            f"adapter {name!r} is not served here; available: {', '.join(available) or 'none (base model only)'}",
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


def _seeded(params: Any, offset: int) -> Any:
    return params if params.seed is None or offset == 0 else replace(params, seed=params.seed + offset)


def prepare(lm: LoadedModel, request: Any) -> Prepared:
    """Tokenise a request into rows (raises ``HandlerError`` for problems only the model can see)."""
    if isinstance(request, GenerateRequest):
        rows: list[Row] = []
        for index, (prompt, adapter) in enumerate(zip(request.inputs, request.adapters, strict=True)):
            adapter = resolve_adapter(lm, adapter)
            ids = tuple(lm.tokenizer_for(adapter)(prompt).input_ids)
            _check_length(lm, len(ids), request.params.max_new_tokens,
                          f"inputs[{index}]" if request.is_list else "inputs")
            rows.extend(
                Row(ids, adapter, _seeded(request.params, j), logprobs=request.details)
                for j in range(request.num_return_sequences)
            )
        return Prepared(request, rows)
    if isinstance(request, rag.RagRequest):
        adapter = resolve_adapter(lm, request.adapter)
        budget = lm.context_length - request.params.max_new_tokens
        tokenizer = lm.tokenizer_for(adapter)
        prompt_ids, used, dropped = rag.build_prompt(tokenizer, lm.settings.rag_template, request, budget)
        return Prepared(request, [Row(tuple(prompt_ids), adapter, request.params, logprobs=request.details)],
                        {"sources": used, "dropped_sources": dropped})
    if isinstance(request, chat.ChatRequest):
        adapter = resolve_adapter(lm, request.model)
        tokenizer = lm.tokenizer_for(adapter)
        ids = tuple(tokenizer(chat.prompt_text(tokenizer, request.messages), add_special_tokens=False).input_ids)
        _check_length(lm, len(ids), request.params.max_new_tokens, "messages")
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
        if isinstance(request, InfoRequest):
            answers[index] = info(lm)
            continue
        try:
            prepared.append((index, prepare(lm, request)))
        except HandlerError as err:
            answers[index] = err
    rows = [row for _, p in prepared for row in p.rows]
    if rows:
        deadline = deadline_for(lm)
        limit = lm.settings.max_batch_rows
        with lm.lock:
            results = [r for start in range(0, len(rows), limit)
                       for r in generate(lm, rows[start : start + limit], deadline=deadline)]
        offset = 0
        for index, p in prepared:
            answers[index] = render(lm, p, results[offset : offset + len(p.rows)])
            offset += len(p.rows)
    return answers


def stream(lm: LoadedModel, request: Any) -> Iterator[bytes]:
    """Stream one request: JSON lines (generate, RAG) or server-sent events (chat).

    Preparation errors raise before the first chunk, so the caller can still answer with a status.
    Closing the iterator (the client went away) stops generation at the next token.
    """
    if isinstance(request, GenerateRequest) and (request.is_list or request.num_return_sequences > 1):
        raise InvalidRequest("stream supports a single input with num_return_sequences 1", param="stream")
    prepared = prepare(lm, request)
    return _stream_chat(lm, prepared) if isinstance(request, chat.ChatRequest) else _stream_lines(lm, prepared)


def _decode_locked(lm: LoadedModel, rows: list[Row]) -> Iterator[list[Delta]]:
    with lm.lock:
        yield from decode(lm, rows, deadline=deadline_for(lm))


def _stream_lines(lm: LoadedModel, prepared: Prepared) -> Iterator[bytes]:
    result = RowResult(prompt_tokens=len(prepared.rows[0].prompt_ids))
    for step in _decode_locked(lm, prepared.rows):
        delta = step[0]
        result.text += delta.text
        result.token_ids.append(delta.token_id)
        line: dict[str, Any] = {"token": {"id": delta.token_id, "text": delta.text, "log_prob": delta.logprob}}
        if delta.finish_reason:
            result.finish_reason = delta.finish_reason
            line.update(render(lm, prepared, [result]))
        yield (json.dumps(line, ensure_ascii=False) + "\n").encode()


def _stream_chat(lm: LoadedModel, prepared: Prepared) -> Iterator[bytes]:
    request: chat.ChatRequest = prepared.request
    cid, model, created = prepared.meta["id"], prepared.meta["model"], int(time.time())
    n = len(prepared.rows)
    yield chat.chunk(cid, created, model, [
        {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None} for i in range(n)
    ])
    completion = 0
    for step in _decode_locked(lm, prepared.rows):
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


def _memory() -> dict[str, Any]:
    import torch

    memory: dict[str, Any] = {}
    try:
        with open("/proc/self/statm") as statm:
            memory["process_rss_bytes"] = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    if torch.cuda.is_available():
        memory["gpu_allocated_bytes"] = int(torch.cuda.memory_allocated())
        memory["gpu_reserved_bytes"] = int(torch.cuda.memory_reserved())
    return memory


def info(lm: LoadedModel) -> dict[str, Any]:
    """Model info: base model, dtype, device, context length, adapters, limits and memory in use."""
    import torch

    params = sum(p.numel() for p in lm.model.parameters())
    s = lm.settings
    return {
        "handler_version": __version__,
        "base_model": lm.base_name,
        "dtype": str(lm.dtype).removeprefix("torch."),
        "device": str(lm.device),
        "context_length": lm.context_length,
        "parameters": params,
        "merged_adapter": lm.merged_adapter,
        "default_adapter": s.default_adapter or None,
        "adapters": [adapter.describe() for adapter in lm.adapters.values()],
        "failed_adapters": [{"name": name, "reason": reason} for name, reason in lm.failed_adapters.items()],
        "limits": {"max_new_tokens": s.max_new_tokens, "default_max_new_tokens": s.default_max_new_tokens,
                   "max_inputs": s.max_inputs, "max_payload_bytes": s.max_payload_bytes,
                   "max_batch_rows": s.max_batch_rows, "time_budget_s": s.time_budget_s},
        "memory": _memory(),
        "load_seconds": round(lm.load_seconds, 3),
        "versions": {"torch": torch.__version__, **_lib_versions()},
    }


def _lib_versions() -> dict[str, str]:
    import peft
    import transformers

    return {"transformers": transformers.__version__, "peft": peft.__version__}
