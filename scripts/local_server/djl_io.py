"""HTTP requests to DJL ``Input`` objects and DJL ``Output`` objects back to HTTP answers.

Properties are formed as DJL Serving forms them: the HTTP headers as sent, ``requestId``,
``model_dir``, ``device_id``, and ``X-Amzn-SageMaker-Custom-Attributes`` split into ``k=v``
properties; the body is content key ``data``. Several requests become one batch Input keyed
``batch_{i}.<key>`` with a ``batch_size`` property, and the batch Output is split back by the same keys.
"""

from __future__ import annotations

import importlib
import json
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

COMPAT_DIR = Path(__file__).resolve().parent / "djl_compat"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
JSON = "application/json"
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
    stream: Iterator[bytes] | None = None

    @property
    def content_type(self) -> str:
        return next((v for k, v in self.headers.items() if k.lower() == "content-type"), JSON)

    def json(self) -> Any:
        return json.loads(self.body)


def build_input(djl: ModuleType, calls: Sequence[Call]) -> Any:
    """One Input: a plain request for one call, a DJL batch (``batch_{i}.<key>``) for several."""
    if len(calls) == 1:
        return djl.Input(dict(calls[0].properties), [("data", calls[0].body)])
    props: dict[str, str] = {"batch_size": str(len(calls))}
    content: list[tuple[str, bytes]] = []
    for index, call in enumerate(calls):
        props.update({f"batch_{index}.{k}": v for k, v in call.properties.items()})
        content.append((f"batch_{index}.data", call.body))
    return djl.Input(props, content)


def init_input(djl: ModuleType, properties: Mapping[str, str]) -> Any:
    """The init call: empty content, the ``option.*`` properties (prefix stripped) and ``model_dir``."""
    return djl.Input(dict(properties), [])


def _pairs(content: Any) -> list[tuple[str | None, bytes]]:
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


def _stream(output: Any) -> Iterator[bytes] | None:
    chunks = getattr(output, "stream_content", None)
    if chunks is None:
        return None
    formatter: Callable[[Any], Any] = getattr(output, "stream_output_formatter", None) or (lambda c: c)
    return _formatted(chunks, formatter)


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
    """Answers for the ``count`` calls of one Input. ``None`` (or no Output) is an empty 200.

    A batch Output has one status; when it is 2xx, an item whose body is a handler error body gets
    that error's status back (DJL itself answers such an item 200 with the error body inside).
    """
    if output is None:
        return [Answer(200, {"Content-Type": JSON}) for _ in range(count)]
    code = int(getattr(output, "code", 200) or 200)
    props = {str(k): str(v) for k, v in dict(getattr(output, "properties", {}) or {}).items()}
    common = {k: v for k, v in props.items() if not k.startswith("batch_")}
    pairs = _pairs(getattr(output, "content", []))
    if count == 1:
        stream = _stream(output)
        body = next((v for k, v in pairs if k == "data"), pairs[0][1] if pairs else b"")
        return [Answer(code, common, body, stream)]
    answers = []
    for index in range(count):
        prefix = f"batch_{index}."
        headers = dict(common)
        headers.update({k[len(prefix):]: v for k, v in props.items() if k.startswith(prefix)})
        items = [v for k, v in pairs if k is not None and k.startswith(prefix)]
        body = items[0] if items else b"".join(v for k, v in pairs if k is None or not k.startswith("batch_"))
        status = code
        if code < 300:
            status = error_status(body) or code
        answers.append(Answer(status, headers, body))
    return answers
