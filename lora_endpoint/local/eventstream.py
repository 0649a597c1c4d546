"""AWS event-stream framing, as the SageMaker runtime sends ``invoke_endpoint_with_response_stream``.

A message is: prelude (total length u32, headers length u32, CRC32 of those 8 bytes), headers
(name length u8, name, type u8 = 7 for string, value length u16, value), payload, and the CRC32 of
everything before it. botocore's ``EventStreamBuffer`` checks both CRCs.
"""

from __future__ import annotations

import json
import struct
import zlib

STRING = 7
EVENTSTREAM = "application/vnd.amazon.eventstream"


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode("utf-8"), value.encode("utf-8")
    return struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", STRING, len(raw_value)) + raw_value


def encode_message(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", zlib.crc32(prelude) & 0xFFFFFFFF)
    message = prelude + raw_headers + payload
    return message + struct.pack("!I", zlib.crc32(message) & 0xFFFFFFFF)


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event carrying ``data`` (its ``Bytes`` member is the event payload)."""
    return encode_message(
        {":event-type": "PayloadPart", ":message-type": "event", ":content-type": "application/octet-stream"},
        data,
    )


def model_stream_error(message: str, error_code: str) -> bytes:
    """The ``ModelStreamError`` exception event (members ``Message``, ``ErrorCode``)."""
    body = json.dumps({"Message": message, "ErrorCode": error_code}).encode("utf-8")
    return encode_message(
        {":exception-type": "ModelStreamError", ":message-type": "exception", ":content-type": "application/json"},
        body,
    )
