"""HTTP requests to DJL ``Input`` objects, and a sync-mode ``Output`` back to HTTP answers.

Properties are formed as DJL Serving forms them: the HTTP headers as sent, ``requestId``,
``model_dir``, ``device_id``, and ``X-Amzn-SageMaker-Custom-Attributes`` split into ``k=v``
properties; the body is content key ``data``. Several requests become one batch Input keyed
``batch_000.<key>`` with a ``batch_size`` property, and the batch Output is split back as DJL's
PyPredictor splits it: a status of 300 or more answers every caller with the whole Output, otherwise
there must be exactly one ``batch_<i>.<key>`` content entry per item. (Async mode's Outputs are
records, read by ``async_frontend``.)
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from .streaming import pump

log = logging.getLogger("lora_endpoint.local")

COMPAT_DIR = Path(__file__).resolve().parent / "djl_compat"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
JSON = "application/json"
_BATCH_OUTPUT_KEY = re.compile(r"batch_(\d+)\.(.*)", re.S)  # PyPredictor's BATCH_PATTERN
# Headers that belong to the HTTP connection, not to the request: DJL does not see them either.
_HOP_HEADERS = frozenset({"connection", "content-length", "transfer-encoding", "keep-alive", "host", "expect"})


def ensure_djl_python() -> ModuleType:
    """``djl_python``: the real one when importable (inside the LMI image), else the compatible one."""
    try:
        return importlib.import_module("djl_python")
    except ImportError:
        if str(COMPAT_DIR) not in sys.path:
            sys.path.append(str(COMPAT_DIR))
        return importlib.import_module("djl_python")


def split_custom_attributes(value: str | None) -> dict[str, str]:
    """``a=1; b=2`` -> ``{"a": "1", "b": "2"}`` (entries without ``=`` are skipped), as DJL does."""
    pairs: dict[str, str] = {}
    for part in (value or "").split(";"):
        key, sep, val = part.partition("=")
        if sep and key.strip():
            pairs[key.strip()] = val.strip()
    return pairs


@dataclass(frozen=True)
class Call:
    """One request as DJL would see it: its properties and its body."""

    properties: dict[str, str]
    body: bytes

    @classmethod
    def from_http(cls, headers: Mapping[str, str], body: bytes, *, model_dir: str,
                  extra: Mapping[str, str] | None = None) -> Call:
        props = {k: v for k, v in headers.items() if k.lower() not in _HOP_HEADERS}
        props.update(extra or {})
        custom = next((v for k, v in props.items() if k.lower() == CUSTOM_ATTRIBUTES.lower()), None)
        for key, val in split_custom_attributes(custom).items():
            props.setdefault(key, val)
        props.setdefault("requestId", uuid.uuid4().hex)
        props["model_dir"] = model_dir
        props.setdefault("device_id", "-1")
        return cls(props, body)


@dataclass
class Answer:
    """What goes back to one caller: status, headers, and either a body or a stream of chunks."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), JSON)

    def json(self) -> Any:
        return json.loads(self.body)


def build_input(djl: ModuleType, calls: Sequence[Call]) -> Any:
    """One Input: a plain request for one call, a DJL batch (``batch_000.<key>``) for several."""
    if len(calls) == 1:
        return djl.Input(dict(calls[0].properties), [("data", calls[0].body)])
    props: dict[str, str] = {"batch_size": str(len(calls))}
    content: list[tuple[str, bytes]] = []
    for index, call in enumerate(calls):
        prefix = f"batch_{index:03d}."  # three digits, as the frontend writes them (and Input parses them)
        props.update({prefix + k: v for k, v in call.properties.items()})
        content.append((prefix + "data", call.body))
    return djl.Input(props, content)


def init_input(djl: ModuleType, properties: Mapping[str, str]) -> Any:
    """The init call: empty content, the ``option.*`` properties (prefix stripped) and ``model_dir``."""
    return djl.Input(dict(properties), [])


def content_pairs(content: Any) -> list[tuple[str | None, bytes]]:
    """An Output's content as ``(key, bytes)`` pairs (the stand-in's list or the real PairList)."""
    if isinstance(content, list):
        return [(k, _as_bytes(v)) for k, v in content]
    keys = getattr(content, "get_keys", None) or getattr(content, "keys", None)
    values = getattr(content, "get_values", None) or getattr(content, "values", None)
    if callable(keys) and callable(values):  # the real djl_python's PairList
        return [(k, _as_bytes(v)) for k, v in zip(keys(), values(), strict=False)]
    return []


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def _stream(output: Any) -> AsyncIterator[bytes] | None:
    """A sync Output's stream content, formatted, bridged to the event loop (not started yet)."""
    chunks = getattr(output, "stream_content", None)
    if chunks is None:
        return None
    formatter: Callable[[Any], Any] = getattr(output, "stream_output_formatter", None) or (lambda c: c)
    return pump(_formatted(chunks, formatter))


def _formatted(chunks: Iterator[Any], formatter: Callable[[Any], Any]) -> Iterator[bytes]:
    try:
        for chunk in chunks:
            yield _as_bytes(formatter(chunk))
    finally:
        close = getattr(chunks, "close", None)
        if callable(close):
            close()  # the client went away or the stream ended: stop generation


def failure_answer(message: str = "prediction failure") -> Answer:
    """An exception escaped ``handle()``: DJL answers 424; details stay in the log."""
    body = {"code": 424, "message": message, "error": "internal error; see the server log"}
    return Answer(424, {"Content-Type": JSON}, json.dumps(body).encode())


def error_status(body: bytes) -> int | None:
    """The status inside a handler error body (``{"code": 404, "type": ..., "error": {...}}``), if any."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict) and isinstance(data.get("type"), str):
        code = data.get("code")
        if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
            return code
    return None


def split_output(output: Any, count: int) -> list[Answer]:
    """Answers for the ``count`` calls of one Input, as DJL's frontend splits a batch Output.

    ``None`` (or no Output) is an empty 200. For a batch, a status of 300 or more answers every caller
    with the Output's first content (what DJL does); otherwise the Output needs exactly one content entry
    per item, keyed ``batch_<i>.<key>``, and every item shares the Output's status and headers. Locally,
    an item whose body is a handler error body then gets that error's status back (deployed, DJL answers
    such an item 200 with the error body inside; see docs/handler.md).
    """
    if output is None:
        return [Answer(200, {"Content-Type": JSON}) for _ in range(count)]
    code = int(getattr(output, "code", 200) or 200)
    props = {str(k): str(v) for k, v in dict(getattr(output, "properties", {}) or {}).items()}
    pairs = content_pairs(getattr(output, "content", []))
    if count == 1:
        stream = _stream(output)
        body = next((v for k, v in pairs if k == "data"), pairs[0][1] if pairs else b"")
        return [Answer(code, props, body, stream)]
    if code >= 300:
        return [Answer(code, dict(props), pairs[0][1] if pairs else b"") for _ in range(count)]
    bodies: dict[int, bytes] = {}
    for key, value in pairs:
        match = _BATCH_OUTPUT_KEY.fullmatch(key or "")
        if len(pairs) != count or match is None or not 0 <= int(match.group(1)) < count:
            log.error("batch Output has %d entries (keys %s) for %d requests: DJL refuses it", len(pairs),
                      [k for k, _ in pairs][:5], count)
            return [failure_answer("batch output does not match the batch") for _ in range(count)]
        bodies[int(match.group(1))] = value
    return [Answer(error_status(bodies[i]) or code, dict(props), bodies[i]) for i in range(count)]
