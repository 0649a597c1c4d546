"""From a request to rows: the adapter a row runs with, and its prompt's token ids within bounds.

Shared by every request kind's ``to_rows``; the bound makes refusing an over-long prompt cheap (see
``longest_token``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

from lora_endpoint.contract.errors import ContextLengthExceeded, UnknownAdapter, shown

from .generation import Row
from .loading import LoadedModel
from .sampling import SamplingParams


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
    if lm.registry is not None and not lm.merged_adapter:
        return str(lm.registry.resolve(name))  # aliases, just-in-time adapters, 404 listing the others
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


def seeded(params: SamplingParams, offset: int) -> SamplingParams:
    """The parameters of a request's ``offset``-th extra sequence: its own seed, if one was given."""
    return params if params.seed is None or offset == 0 else replace(params, seed=params.seed + offset)
