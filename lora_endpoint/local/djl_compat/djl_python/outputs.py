"""Compatible ``djl_python.outputs.Output``."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any


class Output:
    def __init__(self, code: int = 200, message: str = "OK") -> None:
        self.code = code
        self.message = message
        self.properties: dict[str, str] = {}
        self.content: list[tuple[str | None, bytes]] = []
        self.stream_content: Iterator[Any] | None = None
        self.stream_output_formatter: Callable[[Any], Any] | None = None

    def set_code(self, code: int) -> Output:
        self.code = code
        return self

    def set_message(self, message: str) -> Output:
        self.message = message
        return self

    def error(self, error: str, code: int = 424, message: str = "prediction failure") -> Output:
        self.code = code
        self.message = message
        self.add_property("content-type", "application/json")
        return self.add_as_json({"code": code, "message": message, "error": error})

    def add_property(self, key: str, val: str) -> Output:
        self.properties[key] = val
        return self

    def add(self, value: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        if batch_index is not None:
            key = f"batch_{batch_index}.{'' if key is None else key}"
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, bytes | bytearray):
            data = bytes(value)
        else:
            data = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self.content.append((key, data))
        return self

    def add_as_json(self, val: Any, key: str | None = None, batch_index: int | None = None) -> Output:
        return self.add(json.dumps(val, ensure_ascii=False, allow_nan=False).encode("utf-8"), key, batch_index)

    def add_stream_content(self, stream_content: Iterator[Any], output_formatter: Callable[[Any], Any] | None = None):
        self.stream_content = stream_content
        self.stream_output_formatter = output_formatter

    @staticmethod
    def binary_encode(data: dict[str, Any]) -> bytes:
        """The async mode's record (as the real one writes it): a short count, then UTF-8 key/value pairs,
        each a big-endian int length and the bytes (-1 for None); values are ``str(value)``."""
        msg = bytearray(struct.pack(">h", len(data)))
        for key, value in data.items():
            Output.write_utf8(msg, key)
            Output.write_utf8(msg, str(value))
        return bytes(msg)

    @staticmethod
    def write_utf8(msg: bytearray, val: str | None) -> None:
        if val is None:
            msg += struct.pack(">i", -1)
        else:
            buf = val.encode("utf-8")
            msg += struct.pack(">i", len(buf)) + buf

    # --- test helpers: what the Java side would read ------------------------------------------------
    def record(self, index: int = 0) -> dict[str, str]:
        """An async-mode Output's record, decoded as the frontend's ``Request.addResponse`` reads it."""
        return decode_record(self.content[index][1])

    def body(self, index: int = 0) -> bytes:
        return self.content[index][1]

    def json(self, index: int = 0) -> Any:
        return json.loads(self.body(index))

    def streamed(self) -> bytes:
        assert self.stream_content is not None
        fmt = self.stream_output_formatter or (lambda chunk: chunk)
        return b"".join(fmt(chunk) for chunk in self.stream_content)


def decode_record(data: bytes) -> dict[str, str]:
    """``binary_encode``'s record back as a dict of strings (``last`` is "True" / "False")."""
    (count,) = struct.unpack_from(">h", data, 0)
    offset, record = 2, {}
    for _ in range(count):
        pair = []
        for _ in range(2):
            (length,) = struct.unpack_from(">i", data, offset)
            offset += 4
            pair.append(data[offset : offset + length].decode("utf-8"))
            offset += length
        record[pair[0]] = pair[1]
    return record
