"""Typed readers for request fields: each names the field in its message, and null always means "the
default". A leaf module: the request kinds (generate, RAG, chat, info) and the sampling parameters read
their fields with these; it imports nothing of them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from lora_endpoint.contract import api as contract
from lora_endpoint.contract.errors import InvalidRequest, shown
from lora_endpoint.contract.settings import HandlerSettings

from .adapters import BASE_MODEL_ALIASES
from .sampling import SAMPLING_EPS, SamplingParams

MAX_STOP_SEQUENCES = contract.MAX_STOP_SEQUENCES
MAX_STOP_LENGTH = 256
MAX_SEED = 2**63 - 1


def read_int(obj: Mapping[str, Any], key: str, field: str, low: int, high: int, default: int) -> int:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest(f"{field} must be an integer, got {shown(value)}", param=field)
    if not low <= value <= high:
        raise InvalidRequest(f"{field} must be {low}..{high}, got {shown(value)}", param=field)
    return value


def read_float(
    obj: Mapping[str, Any], key: str, field: str, low: float, high: float, default: float, *, low_open: bool = False
) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{field} must be a number, got {shown(value)}", param=field)
    bad_low = value <= low if low_open else value < low
    if bad_low or value > high:
        bound = f"({low}, {high}]" if low_open else f"{low}..{high}"
        raise InvalidRequest(f"{field} must be in {bound}, got {shown(value)}", param=field)
    return float(value)


def read_bool(obj: Mapping[str, Any], key: str, field: str, default: bool) -> bool:
    value = obj.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidRequest(f"{field} must be true or false, got {shown(value)}", param=field)
    return value


def read_str(obj: Mapping[str, Any], key: str, field: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string, got {shown(value)}", param=field)
    return value


def read_object(obj: Mapping[str, Any], key: str, field: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRequest(f"{field} must be a JSON object, got {shown(value)}", param=field)
    return value


def one_of(obj: Mapping[str, Any], keys: tuple[str, ...], field_prefix: str) -> str | None:
    """The one key of ``keys`` that ``obj`` sets (not null); two set at once is a 400."""
    present = [k for k in keys if obj.get(k) is not None]
    if len(present) > 1:
        raise InvalidRequest(f"give only one of {', '.join(field_prefix + k for k in present)}",
                             param=field_prefix + present[1])
    return present[0] if present else None


def read_stop(obj: Mapping[str, Any], keys: tuple[str, ...], field_prefix: str) -> tuple[str, ...]:
    key = one_of(obj, keys, field_prefix)
    if key is None:
        return ()
    field = field_prefix + key
    value = obj[key]
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise InvalidRequest(f"{field} must be a string or a list of strings", param=field)
    if len(items) > MAX_STOP_SEQUENCES:
        raise InvalidRequest(f"{field} may hold at most {MAX_STOP_SEQUENCES} sequences, got {len(items)}", param=field)
    for item in items:
        if not 1 <= len(item) <= MAX_STOP_LENGTH:
            raise InvalidRequest(f"{field} entries must be 1..{MAX_STOP_LENGTH} characters", param=field)
    return tuple(items)


def reject_unknown(obj: Mapping[str, Any], allowed: frozenset[str] | tuple[str, ...], where: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        names = ", ".join(shown(name)[1:-1] for name in unknown[:8]) + (", ..." if len(unknown) > 8 else "")
        raise InvalidRequest(
            f"unknown field{'s' if len(unknown) > 1 else ''} in {where}: {names}; "
            f"accepted: {', '.join(sorted(allowed))}",
            param=shown(unknown[0])[1:-1],
        )


def reject_unsupported(obj: Mapping[str, Any], table: Mapping[str, contract.Unsupported], prefix: str) -> None:
    """Parameters we do not implement pass only with their neutral ("off") value."""
    for key, spec in table.items():
        if key in obj and not contract.is_neutral(obj[key], spec):
            neutral = " or ".join(["null", *(json.dumps(v) for v in spec.neutral)])
            raise InvalidRequest(
                f"{prefix}{key}: {spec.feature} is not supported by this endpoint; send {neutral} or leave it out",
                param=prefix + key,
            )


def adapter_name(item: Any, field: str) -> str | None:
    """One adapter reference: null, "" or a base alias mean the base model."""
    if item is None or item == "":
        return None
    if not isinstance(item, str):
        raise InvalidRequest(f"{field} entries must be strings or null, got {shown(item)}", param=field)
    return None if item in BASE_MODEL_ALIASES else item


def read_adapter_field(value: Any, field: str, count: int) -> tuple[str | None, ...]:
    """``adapters``: a name for every input, or one list entry per input; null or a base alias = base."""
    if isinstance(value, list):
        if len(value) != count:
            raise InvalidRequest(
                f"{field} has {len(value)} entries for {count} inputs; give one per input", param=field
            )
        return tuple(adapter_name(v, field) for v in value)
    return (adapter_name(value, field),) * count


def with_adapter_id(adapters: tuple[str | None, ...], body: Mapping[str, Any],
                    params: Mapping[str, Any]) -> tuple[str | None, ...]:
    """TGI / LoRAX name the adapter in ``parameters.adapter_id``; it agrees with ``adapters`` or stands alone."""
    adapter_id = read_str(params, "adapter_id", "parameters.adapter_id")
    if adapter_id is None:
        return adapters
    chosen = adapter_name(adapter_id, "parameters.adapter_id")
    if body.get("adapters") is not None and set(adapters) != {chosen}:
        raise InvalidRequest("adapters and parameters.adapter_id name different adapters; give one of them",
                             param="parameters.adapter_id")
    return (chosen,) * len(adapters)


def read_top_k(obj: Mapping[str, Any], field: str) -> int:
    """``top_k``: 0 (TGI) and -1 (LMI, vLLM) both mean off."""
    return max(0, read_int(obj, "top_k", field, -1, 10_000, 0))


def sampling_flag(do_sample: bool | None, temperature: float, top_p: float, top_k: int) -> bool:
    """Explicit ``do_sample`` wins; otherwise any sampling knob turns sampling on (as TGI does)."""
    if do_sample is not None:
        return do_sample
    return temperature >= SAMPLING_EPS and (temperature != 1.0 or top_p < 1.0 or top_k > 0)


def read_sampling(params: Mapping[str, Any], settings: HandlerSettings, prefix: str,
                  max_tokens_key: str = "max_new_tokens") -> SamplingParams:
    """The sampling fields shared by every shape (``prefix`` is how the caller spells the container)."""
    temperature = read_float(params, "temperature", f"{prefix}temperature", 0.0, 2.0, 1.0)
    top_p = read_float(params, "top_p", f"{prefix}top_p", 0.0, 1.0, 1.0, low_open=True)
    top_k = read_top_k(params, f"{prefix}top_k")
    do_sample = params.get("do_sample")
    if do_sample is not None and not isinstance(do_sample, bool):
        raise InvalidRequest(f"{prefix}do_sample must be true or false, got {shown(do_sample)}",
                             param=f"{prefix}do_sample")
    eos_key = one_of(params, ("ignore_eos", "ignore_eos_token"), prefix) or "ignore_eos"
    return SamplingParams(
        max_new_tokens=read_int(
            params, max_tokens_key, f"{prefix}{max_tokens_key}", 1, settings.max_new_tokens,
            settings.default_max_new_tokens,
        ),
        do_sample=sampling_flag(do_sample, temperature, top_p, top_k),
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        repetition_penalty=read_float(
            params, "repetition_penalty", f"{prefix}repetition_penalty", 0.0, 10.0, 1.0, low_open=True
        ),
        seed=None if params.get("seed") is None else read_int(params, "seed", f"{prefix}seed", 0, MAX_SEED, 0),
        stop=read_stop(params, ("stop", "stop_sequences"), prefix),
        ignore_eos=read_bool(params, eos_key, f"{prefix}{eos_key}", False),
    )
