"""Media types: what a request's ``Content-Type`` says and what its ``Accept`` allows (RFC 9110 rules).

The handler reads JSON and writes JSON, JSON lines (generate/RAG streams) or server-sent events (chat
streams). A missing ``Content-Type`` is read as JSON (SageMaker clients often leave it out); one that
does not parse as ``type/subtype`` is a 415. An ``Accept`` that allows none of what the response would
be is a 406; entries that do not parse are ignored, as RFC 9110 lets a server do, so only an ``Accept``
with nothing usable in it is refused.
"""

from __future__ import annotations

import re

from lora_endpoint.contract.errors import NotAcceptable, UnsupportedMediaType, shown

JSON = "application/json"
JSON_LINES = "application/jsonlines"
EVENT_STREAM = "text/event-stream"
JSON_TYPES = frozenset({JSON, "application/x-json", "text/json"})

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"^\s*({_TOKEN})/({_TOKEN})\s*(;.*)?$")
_Q = re.compile(r";\s*q\s*=\s*([0-9.]+)\s*(;|$)", re.I)


def media_type(value: str | None) -> str | None:
    """``type/subtype`` of a header value in lower case; None when absent or empty; 415 when malformed."""
    if value is None or not value.strip():
        return None
    match = _MEDIA_TYPE.match(value)
    if not match:
        raise UnsupportedMediaType(f"Content-Type {shown(value)} is not a media type; send application/json")
    return f"{match.group(1)}/{match.group(2)}".lower()


def check_content_type(value: str | None) -> None:
    """JSON (``application/json``, ``text/json``, any ``+json``) or nothing; anything else is a 415."""
    kind = media_type(value)
    if kind is not None and kind not in JSON_TYPES and not kind.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {shown(value)}")


def _ranges(accept: str) -> list[tuple[str, str, float]]:
    """The parseable media ranges of an Accept header with their q-values."""
    found = []
    for part in accept.split(","):
        match = _MEDIA_TYPE.match(part)
        if not match:
            continue  # unparseable entries are ignored
        q = 1.0
        q_match = _Q.search(match.group(3) or "")
        if q_match:
            try:
                q = float(q_match.group(1))
            except ValueError:
                continue
        found.append((match.group(1).lower(), match.group(2).lower(), q))
    return found


def acceptable(accept: str | None, offered: tuple[str, ...]) -> bool:
    """True when ``accept`` allows at least one of the ``offered`` types (absent or empty allows all)."""
    if accept is None or not accept.strip():
        return True
    for main, sub, q in _ranges(accept):
        if q <= 0:
            continue
        for candidate in offered:
            c_main, _, c_sub = candidate.partition("/")
            if main == "*" or (main == c_main and sub in ("*", c_sub)):
                return True
    return False


def check_accept(accept: str | None, *, stream_type: str | None) -> None:
    """406 unless ``accept`` allows JSON, or for a stream its own type (``stream_type``)."""
    offered = (JSON,) if stream_type is None else (stream_type, JSON)
    if not acceptable(accept, offered):
        raise NotAcceptable(f"Accept {shown(accept)} allows none of {', '.join(offered)}")
