"""OpenAI-compatible chat completions: request parsing, prompt building and response rendering.

``model`` names the adapter (absent, or the base model's name, means the base). The prompt comes from
the tokenizer's chat template, the adapter's own when it ships one.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config import HandlerSettings
from .errors import InvalidRequest
from .schema import SamplingParams, read_bool, read_float, read_int, read_stop, reject_unknown

ROLES = frozenset({"system", "user", "assistant"})
CHAT_KEYS = frozenset(
    {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "seed",
     "stream", "stream_options", "user", "adapters"}
)
UNSUPPORTED = {
    "tools": "tool calling", "tool_choice": "tool calling", "functions": "function calling",
    "function_call": "function calling", "response_format": "structured output", "logit_bias": "logit_bias",
    "logprobs": "logprobs", "top_logprobs": "logprobs", "audio": "audio", "modalities": "modalities",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
}
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
                raise InvalidRequest(f"{field}: only text parts are supported, got {kind!r}", param=field)
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidRequest(f"{field} must be a string or a list of text parts", param=field)


def parse_chat(body: Mapping[str, Any], settings: HandlerSettings) -> ChatRequest:
    for key, feature in UNSUPPORTED.items():
        if body.get(key) not in (None, False, 0, 0.0):
            raise InvalidRequest(f"{key}: {feature} is not supported by this endpoint", param=key)
    reject_unknown({k: v for k, v in body.items() if k not in UNSUPPORTED}, CHAT_KEYS, "a chat request")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("messages must be a non-empty list", param="messages")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages[{index}] must be an object", param="messages")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(
                f"messages[{index}].role must be one of {', '.join(sorted(ROLES))}, got {role!r}", param="messages"
            )
        extra = set(message) - {"role", "content", "name"}
        if extra:
            raise InvalidRequest(f"messages[{index}] has unsupported fields: {', '.join(sorted(extra))}")
        messages.append({"role": role, "content": _content(message, index)})
    if messages[-1]["role"] == "assistant":
        raise InvalidRequest("the last message must not be from the assistant", param="messages")

    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise InvalidRequest("give only one of max_tokens, max_completion_tokens", param="max_tokens")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    temperature = read_float(body, "temperature", "temperature", 0.0, 2.0, 1.0)
    params = SamplingParams(
        max_new_tokens=read_int(body, key, key, 1, settings.max_new_tokens, settings.default_max_new_tokens),
        do_sample=temperature > 0.0,  # OpenAI samples by default; temperature 0 is greedy
        temperature=temperature,
        top_p=read_float(body, "top_p", "top_p", 0.0, 1.0, 1.0, low_open=True),
        seed=None if body.get("seed") is None else read_int(body, "seed", "seed", 0, 2**63 - 1, 0),
        stop=read_stop(body, ("stop",), ""),
    )
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or set(options) - {"include_usage"}:
        raise InvalidRequest("stream_options may hold only include_usage", param="stream_options")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string", param="model")
    adapters = body.get("adapters")
    if adapters is not None and not isinstance(adapters, str):
        raise InvalidRequest("adapters must be a string in a chat request", param="adapters")
    stream = read_bool(body, "stream", "stream", False)
    return ChatRequest(
        messages=tuple(messages),
        model=model or adapters or None,
        params=params,
        n=read_int(body, "n", "n", 1, settings.max_return_sequences, 1),
        stream=stream,
        include_usage=read_bool(options, "include_usage", "stream_options.include_usage", False),
    )


def prompt_text(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> str:
    """Render the conversation with the tokenizer's chat template, ready for the assistant's turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequest("this model has no chat template; use the inputs shape instead", param="messages")
    return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def render(request: ChatRequest, model_name: str, results: Sequence[Any], completion_id: str) -> dict[str, Any]:
    """A ``chat.completion`` object."""
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
