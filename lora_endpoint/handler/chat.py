"""OpenAI-compatible chat completions: request parsing, prompt building and response rendering.

``model`` names the adapter (absent, or the base model's name, means the base). The prompt comes from
the tokenizer's chat template, the adapter's own when it ships one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from lora_endpoint.contract import api as contract
from lora_endpoint.contract.errors import GenerationFailed, InvalidRequest, shown
from lora_endpoint.contract.settings import HandlerSettings

from .fields import (
    adapter_name,
    one_of,
    read_bool,
    read_float,
    read_int,
    read_object,
    read_stop,
    read_str,
    read_top_k,
    reject_unknown,
    reject_unsupported,
)
from .generation import ERROR, Delta, Row, RowResult
from .loading import LoadedModel
from .rows import Prepared, resolve_adapter, seeded, tokenize_prompt
from .sampling import SamplingParams

CHAT_KEYS = frozenset(contract.CHAT_PARAMETERS) | frozenset(contract.CHAT_UNSUPPORTED) | {"messages"}
# Roles as the chat template sees them: OpenAI's "developer" is its newer name for "system".
ROLE_FOR_TEMPLATE = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# finish_reason in OpenAI's vocabulary; the time budget reads as "length" so strict clients still parse.
FINISH = {"eos_token": "stop", "stop_sequence": "stop", "length": "length", "time_limit": "length"}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[dict[str, str], ...]
    model: str | None
    params: SamplingParams
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    kind: str = "chat"

    def with_default_adapter(self, name: str | None) -> ChatRequest:
        return self if self.model is not None else replace(self, model=name)


def _content(message: Mapping[str, Any], index: int) -> str:
    content = message.get("content")
    field = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(f"{field}: only text parts are supported, got {shown(kind)}", param=field)
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"{field} must be a string or a list of text parts", param=field)


def _messages(raw: Any) -> list[dict[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    messages = []
    for index, message in enumerate(raw):
        field = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"{field} must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLE_FOR_TEMPLATE:
            hint = "; tool messages need tool calling, which this endpoint does not support" if role == "tool" else ""
            raise InvalidRequest(
                f"{field}.role must be one of {', '.join(contract.CHAT_ROLES)}, got {shown(role)}{hint}",
                param=f"{field}.role",
            )
        reject_unknown(message, contract.MESSAGE_FIELDS, field)
        read_str(message, "name", f"{field}.name")
        messages.append({"role": ROLE_FOR_TEMPLATE[role], "content": _content(message, index)})
    if messages[-1]["role"] == "assistant":
        raise InvalidRequest("the last message must not be from the assistant", param="messages")
    return messages


def parse(body: Mapping[str, Any], settings: HandlerSettings) -> ChatRequest:
    reject_unknown(body, CHAT_KEYS, "a chat request")
    reject_unsupported(body, contract.CHAT_UNSUPPORTED, "")
    messages = _messages(body.get("messages"))
    key = one_of(body, ("max_tokens", "max_completion_tokens"), "") or "max_tokens"
    temperature = read_float(body, "temperature", "temperature", 0.0, 2.0, 1.0)
    params = SamplingParams(
        max_new_tokens=read_int(body, key, key, 1, settings.max_new_tokens, settings.default_max_new_tokens),
        do_sample=True,  # OpenAI samples by default; a temperature of 0 (below 1e-5) is greedy
        temperature=temperature,
        top_p=read_float(body, "top_p", "top_p", 0.0, 1.0, 1.0, low_open=True),
        top_k=read_top_k(body, "top_k"),
        repetition_penalty=read_float(body, "repetition_penalty", "repetition_penalty", 0.0, 10.0, 1.0,
                                      low_open=True),
        seed=None if body.get("seed") is None else read_int(body, "seed", "seed", 0, 2**63 - 1, 0),
        stop=read_stop(body, ("stop",), ""),
        ignore_eos=read_bool(body, "ignore_eos", "ignore_eos", False),
    )
    options = read_object(body, "stream_options", "stream_options")
    reject_unknown(options, ("include_usage",), "stream_options")
    model = adapter_name(read_str(body, "model", "model"), "model")
    adapters = adapter_name(read_str(body, "adapters", "adapters"), "adapters")
    read_str(body, "user", "user")
    return ChatRequest(
        messages=tuple(messages),
        model=model or adapters,
        params=params,
        n=read_int(body, "n", "n", 1, settings.max_return_sequences, 1),
        stream=read_bool(body, "stream", "stream", False),
        include_usage=read_bool(options, "include_usage", "stream_options.include_usage", False),
    )


def prompt_text(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """Render the conversation with the tokenizer's chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest("this model has no chat template; use the inputs shape instead", param="messages")
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def to_rows(lm: LoadedModel, request: ChatRequest) -> Prepared:
    """``n`` rows of the conversation rendered with the (adapter's own, else the base's) chat template."""
    adapter = resolve_adapter(lm, request.model)
    tokenizer = lm.tokenizer_for(adapter)
    ids = tokenize_prompt(lm, tokenizer, prompt_text(tokenizer, request.messages), request.params.max_new_tokens,
                          "messages", add_special_tokens=False)
    rows = [Row(ids, adapter, seeded(request.params, j)) for j in range(request.n)]
    return Prepared(request, rows, {"id": new_id(), "model": request.model or lm.base_name})


def render(lm: LoadedModel, prepared: Prepared, results: Sequence[RowResult]) -> dict[str, Any]:
    """A ``chat.completion`` object."""
    model_name, completion_id = prepared.meta["model"], prepared.meta["id"]
    prompt_tokens = results[0].prompt_tokens if results else 0
    completion = sum(len(r.token_ids) for r in results)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": r.text},
                "logprobs": None,
                "finish_reason": FINISH.get(r.finish_reason, "stop"),
            }
            for i, r in enumerate(results)
        ],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                  "total_tokens": prompt_tokens + completion},
    }


def sse(payload: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def chunk(completion_id: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """One ``chat.completion.chunk`` event."""
    body = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": choices, **extra}
    return sse(body)


class ChatEvents:
    """Server-sent ``chat.completion.chunk`` events: the role first, the text of each step, the usage
    when asked, then ``[DONE]``. Fed step by step (``step``), by a sync or an async driver alike."""

    def __init__(self, lm: LoadedModel, prepared: Prepared) -> None:
        self.request: ChatRequest = prepared.request
        self.id, self.model, self.created = prepared.meta["id"], prepared.meta["model"], int(time.time())
        self.rows = len(prepared.rows)
        self.prompt = len(prepared.rows[0].prompt_ids)
        self.completion = 0

    def start(self) -> list[bytes]:
        return [chunk(self.id, self.created, self.model, [
            {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
            for i in range(self.rows)
        ])]

    def step(self, deltas: list[Delta]) -> list[bytes]:
        if any(delta.finish_reason == ERROR for delta in deltas):
            raise GenerationFailed()
        choices = []
        for delta in deltas:
            self.completion += 1
            if delta.text or delta.finish_reason:
                choices.append({
                    "index": delta.row,
                    "delta": {"content": delta.text} if delta.text else {},
                    "finish_reason": FINISH.get(delta.finish_reason) if delta.finish_reason else None,
                })
        return [chunk(self.id, self.created, self.model, choices)] if choices else []

    def end(self) -> list[bytes]:
        events = []
        if self.request.include_usage:
            events.append(chunk(self.id, self.created, self.model, [], usage={
                "prompt_tokens": self.prompt, "completion_tokens": self.completion,
                "total_tokens": self.prompt + self.completion}))
        return [*events, sse("[DONE]")]


def stream_renderer(lm: LoadedModel, prepared: Prepared) -> ChatEvents:
    return ChatEvents(lm, prepared)
