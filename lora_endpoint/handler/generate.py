"""Generate: the LMI / TGI shape (``{"inputs", "parameters", "adapters"}``) and the simple ``prompt`` shape.

Every request kind (generate, RAG, chat, info) has the same small surface: ``parse`` (body -> typed
request), ``to_rows`` (request -> rows for the engine), ``render`` (row results -> response) and
``render_stream`` (engine steps -> response chunks). This module also owns the JSON-lines stream
format, which RAG shares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lora_endpoint.contract import api as contract
from lora_endpoint.contract.errors import GenerationFailed, InvalidRequest
from lora_endpoint.contract.settings import HandlerSettings

from .fields import (
    one_of,
    read_adapter_field,
    read_bool,
    read_int,
    read_object,
    read_sampling,
    reject_unknown,
    reject_unsupported,
    with_adapter_id,
)
from .generation import ERROR, Delta, Row, RowResult
from .loading import LoadedModel
from .rows import Prepared, resolve_adapter, seeded, tokenize_prompt
from .sampling import SamplingParams


@dataclass(frozen=True)
class GenerateRequest:
    """``{"inputs": str | [str], "parameters": {...}, "adapters": ...}`` or the simple ``prompt`` shape."""

    inputs: tuple[str, ...]
    adapters: tuple[str | None, ...]
    params: SamplingParams
    is_list: bool = False
    return_full_text: bool = False
    details: bool = False
    num_return_sequences: int = 1
    stream: bool = False
    truncate: int | None = None
    """Keep only the last ``truncate`` prompt tokens (TGI's parameter)."""
    kind: str = "generate"

    def with_default_adapter(self, name: str | None) -> GenerateRequest:
        """Rows that name no adapter take ``name`` (the adapter header)."""
        return replace(self, adapters=tuple(name if a is None else a for a in self.adapters))


PARAMETER_KEYS = frozenset(contract.GENERATE_PARAMETERS) | frozenset(contract.GENERATE_UNSUPPORTED)
GENERATE_KEYS = frozenset(contract.GENERATE_FIELDS)
SIMPLE_KEYS = frozenset(contract.SIMPLE_FIELDS)


def read_prompts(value: Any, field: str, settings: HandlerSettings) -> tuple[tuple[str, ...], bool]:
    if isinstance(value, str):
        if not value.strip():
            raise InvalidRequest(f"{field} must not be empty", param=field)
        return (value,), False
    if isinstance(value, list):
        if not value:
            raise InvalidRequest(f"{field} must not be an empty list", param=field)
        if len(value) > settings.max_inputs:
            raise InvalidRequest(
                f"{field} may hold at most {settings.max_inputs} prompts, got {len(value)}", param=field
            )
        for index, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                raise InvalidRequest(f"{field}[{index}] must be a non-empty string", param=field)
        return tuple(value), True
    if value is None:
        raise InvalidRequest(f"{field} is required", param=field)
    raise InvalidRequest(f"{field} must be a string or a list of strings, got {type(value).__name__}", param=field)


def parse(body: Mapping[str, Any], settings: HandlerSettings) -> GenerateRequest:
    reject_unknown(body, GENERATE_KEYS, "the request")
    prompts, is_list = read_prompts(body.get("inputs"), "inputs", settings)
    params = read_object(body, "parameters", "parameters")
    reject_unknown(params, PARAMETER_KEYS, "parameters")
    reject_unsupported(params, contract.GENERATE_UNSUPPORTED, "parameters.")
    sampling = read_sampling(params, settings, "parameters.")
    count_key = one_of(params, ("num_return_sequences", "n"), "parameters.") or "num_return_sequences"
    adapters = read_adapter_field(body.get("adapters"), "adapters", len(prompts))
    return GenerateRequest(
        inputs=prompts,
        adapters=with_adapter_id(adapters, body, params),
        params=sampling,
        is_list=is_list,
        return_full_text=read_bool(params, "return_full_text", "parameters.return_full_text", False),
        details=read_bool(params, "details", "parameters.details", False),
        num_return_sequences=read_int(
            params, count_key, f"parameters.{count_key}", 1, settings.max_return_sequences, 1
        ),
        stream=read_bool(body, "stream", "stream", False),
        truncate=None if params.get("truncate") is None else read_int(
            params, "truncate", "parameters.truncate", 1, 1 << 30, 1),
    )


def parse_simple(body: Mapping[str, Any], settings: HandlerSettings) -> GenerateRequest:
    """``{"prompt", "max_length" | "max_new_tokens", "temperature", "top_p"}``; ``max_length`` counts new tokens."""
    reject_unknown(body, SIMPLE_KEYS, "the request")
    if not isinstance(body.get("prompt"), str):
        raise InvalidRequest("prompt must be a string; send a list of prompts as inputs", param="prompt")
    prompts, _ = read_prompts(body.get("prompt"), "prompt", settings)
    length_key = one_of(body, ("max_length", "max_new_tokens"), "") or "max_new_tokens"
    sampling = read_sampling({k: body[k] for k in ("temperature", "top_p") if k in body}, settings, "")
    max_new = read_int(body, length_key, length_key, 1, settings.max_new_tokens, settings.default_max_new_tokens)
    adapter = body.get("adapters")
    if isinstance(adapter, list):
        raise InvalidRequest("adapters must be a string in the prompt shape", param="adapters")
    return GenerateRequest(
        inputs=prompts,
        adapters=read_adapter_field(adapter, "adapters", 1),
        params=replace(sampling, max_new_tokens=max_new),
        stream=read_bool(body, "stream", "stream", False),
    )


def details(results: Sequence[RowResult], tokenizer: Any, with_tokens: bool) -> dict[str, Any]:
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
    """``{"generated_text", "details"}`` per input (a list for a list of inputs)."""
    request: GenerateRequest = prepared.request
    items = []
    per = request.num_return_sequences
    for index, prompt in enumerate(request.inputs):
        group = results[index * per : (index + 1) * per]
        prefix = prompt if request.return_full_text else ""
        item: dict[str, Any] = {"generated_text": prefix + group[0].text,
                                "details": details(group, lm.tokenizer, request.details)}
        if per > 1:
            item["sequences"] = [
                {"generated_text": prefix + r.text, "finish_reason": r.finish_reason,
                 "generated_tokens": len(r.token_ids)}
                for r in group
            ]
        items.append(item)
    return items if request.is_list else items[0]


def to_rows(lm: LoadedModel, request: GenerateRequest) -> Prepared:
    """One row per input and return sequence, each with its adapter and bounded prompt."""
    if request.stream and (request.is_list or request.num_return_sequences > 1):
        raise InvalidRequest("stream supports a single input with num_return_sequences 1", param="stream")
    rows: list[Row] = []
    for index, (prompt, adapter) in enumerate(zip(request.inputs, request.adapters, strict=True)):
        adapter = resolve_adapter(lm, adapter)
        ids = tokenize_prompt(lm, lm.tokenizer_for(adapter), prompt, request.params.max_new_tokens,
                              f"inputs[{index}]" if request.is_list else "inputs", truncate=request.truncate)
        rows.extend(Row(ids, adapter, seeded(request.params, j), logprobs=request.details)
                    for j in range(request.num_return_sequences))
    return Prepared(request, rows)


class JsonLines:
    """The JSON-lines stream of one row: a line per token; the last line also carries ``final``'s
    rendering of the whole answer. Fed step by step (``step``), by a sync or an async driver alike."""

    def __init__(self, lm: LoadedModel, prepared: Prepared,
                 final: Callable[[LoadedModel, Prepared, Sequence[RowResult]], Any]) -> None:
        self.lm, self.prepared, self.final = lm, prepared, final
        self.result = RowResult(prompt_tokens=len(prepared.rows[0].prompt_ids))

    def start(self) -> list[bytes]:
        return []

    def step(self, deltas: list[Delta]) -> list[bytes]:
        lines = []
        for delta in deltas:
            if delta.finish_reason == ERROR:
                raise GenerationFailed()
            self.result.text += delta.text
            self.result.token_ids.append(delta.token_id)
            line: dict[str, Any] = {"token": {"id": delta.token_id, "text": delta.text, "log_prob": delta.logprob}}
            if delta.finish_reason:
                self.result.finish_reason = delta.finish_reason
                line.update(self.final(self.lm, self.prepared, [self.result]))
            lines.append((json.dumps(line, ensure_ascii=False) + "\n").encode())
        return lines

    def end(self) -> list[bytes]:
        return []


def stream_renderer(lm: LoadedModel, prepared: Prepared) -> JsonLines:
    return JsonLines(lm, prepared, render)
