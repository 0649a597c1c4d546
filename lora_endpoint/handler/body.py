"""One strict, bounded parse of a request body: the only way a body becomes data, here and in the local
endpoint's routes. Size (413), strict UTF-8, nesting depth, number-literal length, finite numbers and
valid Unicode in every string and field name (400, naming the field) - all checked before any field is
read, so no body can reach a 500 through ``json.loads`` or a string the tokenizer cannot take.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from lora_endpoint.contract.errors import InvalidRequest, PayloadTooLarge, shown
from lora_endpoint.contract.settings import HandlerSettings

from .media import check_content_type

# Legitimate bodies nest 5 levels (chat content parts) and their numbers are short.
MAX_DEPTH = 32
MAX_NUMBER_CHARS = 100
_SURROGATE = re.compile("[\ud800-\udfff]")


def _number(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:  # checked first: int() refuses more than 4300 digits with a ValueError
        raise InvalidRequest(f"request body has a number literal of {len(text)} characters; "
                             f"the limit is {MAX_NUMBER_CHARS}")
    return text


def _parse_int(text: str) -> int:
    return int(_number(text))


def _parse_float(text: str) -> float:
    return float(_number(text))


def _bad_value(node: Any) -> str | None:
    """What is wrong with one parsed value: a non-finite number or a string that is not valid Unicode."""
    if isinstance(node, float) and not math.isfinite(node):
        return f"must be a finite number, got {node} (NaN and Infinity are not JSON)"
    if isinstance(node, str) and _SURROGATE.search(node):
        return "holds a lone UTF-16 surrogate (such as \\ud800), which is not valid Unicode"
    return None


def _where(data: Any, found: Any) -> str:
    """The field path of ``found`` (by identity) inside ``data``, for the error message."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, path = stack.pop()
        if node is found:
            return path or "the request body"
        if isinstance(node, dict):
            stack.extend((v, f"{path}.{shown(k)[1:-1]}" if path else shown(k)[1:-1]) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return "the request body"


def _check_tree(data: Any) -> None:
    """Depth limit, finite numbers, and valid Unicode in every string and field name."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidRequest(f"request body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(node, dict):
            for key, value in node.items():
                if _SURROGATE.search(key):
                    raise InvalidRequest(f"a field name in {_where(data, node)} {_bad_value(key)}")
                stack.append((value, depth + 1))
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        else:
            problem = _bad_value(node)
            if problem:
                field = _where(data, node)
                raise InvalidRequest(f"{field} {problem}", param=field)


def parse_json(body: bytes | str | None, max_bytes: int) -> dict[str, Any]:
    """Parse a request body as one JSON object, within bounds: size (413), UTF-8, depth, number length,
    valid Unicode (400). Every other route (the local endpoint's too) parses bodies with this."""
    if isinstance(body, str):
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest("request body is not valid Unicode (lone surrogate)") from None
    else:
        raw = bytes(body or b"")
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"request body is {len(raw)} bytes; the limit is {max_bytes}")
    try:
        text = raw.decode("utf-8")  # strict: json.loads(bytes) would let ED A0 80 through as a surrogate
    except UnicodeDecodeError as err:
        raise InvalidRequest(f"request body is not UTF-8 text (byte {err.start})") from None
    text = text.removeprefix("\ufeff")  # a byte order mark is allowed (RFC 8259 section 8.1)
    if not text.strip():
        raise InvalidRequest("request body is empty; send a JSON object such as {\"inputs\": \"Hello\"}")
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float)
    except RecursionError:
        raise InvalidRequest(f"request body is nested more than {MAX_DEPTH} levels deep") from None
    except json.JSONDecodeError as err:
        raise InvalidRequest(f"request body is not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") \
            from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"request body must be a JSON object, got {type(data).__name__}")
    _check_tree(data)
    return data


def decode_json(body: bytes | str | None, content_type: str | None, settings: HandlerSettings) -> dict[str, Any]:
    """Check the content type (415), then parse the body with ``parse_json``."""
    check_content_type(content_type)
    return parse_json(body, settings.max_payload_bytes)


