"""Retrieval-augmented generation over context the caller supplies.

The prompt comes from a template (``LORA_RAG_TEMPLATE``, with ``{context}`` and ``{query}``). Passages
are given in priority order; the context is fitted to the model's window by token budget: whole
passages are kept in order while they fit and the ones that do not fit are dropped, so the lowest
priority passages go first. The response names the passages used and the ones dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lora_endpoint.contract import api as contract
from lora_endpoint.contract.errors import ContextLengthExceeded, InvalidRequest, shown
from lora_endpoint.contract.settings import HandlerSettings

from . import generate
from .fields import (
    adapter_name,
    read_bool,
    read_object,
    read_sampling,
    read_str,
    reject_unknown,
    reject_unsupported,
    with_adapter_id,
)
from .generation import Row, RowResult
from .loading import LoadedModel
from .rows import Prepared, longest_token, resolve_adapter
from .sampling import SamplingParams

RAG_KEYS = frozenset(contract.RAG_FIELDS)
RAG_PARAMETER_KEYS = generate.PARAMETER_KEYS - contract.RAG_EXCLUDED
MAX_PASSAGES = 256
_FIELD = re.compile(r"\{(context|query)\}")


@dataclass(frozen=True)
class Passage:
    id: str | int
    text: str


@dataclass(frozen=True)
class RagRequest:
    query: str
    passages: tuple[Passage, ...]
    params: SamplingParams
    details: bool = False
    return_full_text: bool = False
    stream: bool = False
    adapter: str | None = None
    kind: str = "rag"

    def with_default_adapter(self, name: str | None) -> RagRequest:
        return self if self.adapter is not None else replace(self, adapter=name)


def parse(body: Mapping[str, Any], settings: HandlerSettings) -> RagRequest:
    reject_unknown(body, RAG_KEYS, "a RAG request")
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise InvalidRequest("query must be a non-empty string", param="query")
    raw = body.get("context")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("context must be a non-empty list of passages", param="context")
    if len(raw) > MAX_PASSAGES:
        raise InvalidRequest(f"context may hold at most {MAX_PASSAGES} passages, got {len(raw)}", param="context")
    passages = []
    seen: set[str | int] = set()
    for index, item in enumerate(raw):
        field = f"context[{index}]"
        if isinstance(item, str):
            passage = Passage(index, item)
        elif isinstance(item, dict):
            reject_unknown(item, ("id", "text"), field)
            pid = item.get("id")
            pid = index if pid is None else pid
            if isinstance(pid, bool) or not isinstance(pid, str | int):
                raise InvalidRequest(f"{field}.id must be a string or an integer, got {shown(pid)}", param=field)
            passage = Passage(pid, item.get("text"))  # type: ignore[arg-type]
        else:
            raise InvalidRequest(f"{field} must be a string or an object with id and text", param=field)
        if not isinstance(passage.text, str) or not passage.text.strip():
            raise InvalidRequest(f"{field} text must be a non-empty string", param=field)
        if passage.id in seen:
            raise InvalidRequest(f"{field}.id {shown(passage.id)} is used twice", param=field)
        seen.add(passage.id)
        passages.append(passage)
    params = read_object(body, "parameters", "parameters")
    reject_unknown(params, RAG_PARAMETER_KEYS, "parameters")
    reject_unsupported(params, contract.GENERATE_UNSUPPORTED, "parameters.")
    adapter = adapter_name(read_str(body, "adapters", "adapters"), "adapters")
    (adapter,) = with_adapter_id((adapter,), body, params)
    return RagRequest(
        query=query,
        passages=tuple(passages),
        params=read_sampling(params, settings, "parameters."),
        details=read_bool(params, "details", "parameters.details", False),
        return_full_text=read_bool(params, "return_full_text", "parameters.return_full_text", False),
        stream=read_bool(body, "stream", "stream", False),
        adapter=adapter,
    )


def fill(template: str, context: str, query: str) -> str:
    """Substitute both fields in one pass, so braces inside the caller's text stay as they are."""
    return _FIELD.sub(lambda m: context if m.group(1) == "context" else query, template)


def format_passage(passage: Passage) -> str:
    return f"[{passage.id}] {passage.text.strip()}"


def build_prompt(
    tokenizer: Any, template: str, request: RagRequest, budget: int, chars_per_token: int
) -> tuple[list[int], list[str | int], list[str | int]]:
    """Token ids of the prompt that fits ``budget`` tokens, the passage ids used and those dropped.

    ``chars_per_token`` (the longest token's length) bounds the count from below without tokenising:
    text longer than ``limit * chars_per_token`` characters cannot fit ``limit`` tokens.
    """

    def count(text: str, limit: int) -> int | None:
        """Tokens in ``text``; None when it is too long to fit ``limit`` (then it is not tokenised)."""
        if len(text) > limit * chars_per_token:
            return None
        return len(tokenizer(text).input_ids)

    fixed = count(fill(template, "", request.query), budget)
    if fixed is None or fixed > budget:
        size = f"{fixed} tokens" if fixed is not None else f"more than {budget} tokens"
        raise ContextLengthExceeded(
            f"the query and template take {size}; with max_new_tokens {request.params.max_new_tokens} "
            f"only {budget} fit in the model's context",
            param="query",
        )
    used: list[Passage] = []
    dropped: list[str | int] = []
    remaining = budget - fixed
    for passage in request.passages:
        # +2 for the blank line that joins passages; exact counts are checked on the final prompt
        tokens = count(format_passage(passage), remaining)
        cost = remaining + 1 if tokens is None else tokens + 2
        if cost <= remaining:
            used.append(passage)
            remaining -= cost
        else:
            dropped.append(passage.id)
    while True:
        ids = tokenizer(fill(template, "\n\n".join(format_passage(p) for p in used), request.query)).input_ids
        if len(ids) <= budget or not used:
            break
        dropped.insert(0, used.pop().id)  # tokenisation across joins can differ slightly: drop the last one
    if not used:
        raise ContextLengthExceeded(
            f"no context passage fits: the budget after the query is {budget - fixed} tokens", param="context"
        )
    return list(ids), [p.id for p in used], sorted(dropped, key=lambda pid: _order(request.passages, pid))


def _order(passages: Sequence[Passage], pid: str | int) -> int:
    return next(i for i, p in enumerate(passages) if p.id == pid)


def to_rows(lm: LoadedModel, request: RagRequest) -> Prepared:
    """One row: the template filled with the passages that fit the context (in priority order)."""
    adapter = resolve_adapter(lm, request.adapter)
    tokenizer = lm.tokenizer_for(adapter)
    budget = lm.context_length - request.params.max_new_tokens
    ids, used, dropped = build_prompt(tokenizer, lm.settings.rag_template, request, budget, longest_token(tokenizer))
    return Prepared(request, [Row(tuple(ids), adapter, request.params, logprobs=request.details)],
                    {"sources": used, "dropped_sources": dropped})


def render(lm: LoadedModel, prepared: Prepared, results: Sequence[RowResult]) -> Any:
    """``{"generated_text", "sources", "dropped_sources", "details"}``."""
    request: RagRequest = prepared.request
    text = results[0].text
    if request.return_full_text:
        text = lm.tokenizer.decode(list(prepared.rows[0].prompt_ids), skip_special_tokens=True) + text
    return {"generated_text": text, "sources": prepared.meta["sources"],
            "dropped_sources": prepared.meta["dropped_sources"],
            "details": generate.details(results, lm.tokenizer, request.details)}


def stream_renderer(lm: LoadedModel, prepared: Prepared) -> generate.JsonLines:
    return generate.JsonLines(lm, prepared, render)
