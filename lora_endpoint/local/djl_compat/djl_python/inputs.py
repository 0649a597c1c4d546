"""Compatible ``djl_python.inputs.Input`` (plus ``request``/``batch`` builders as DJL forms them)."""

from __future__ import annotations

import json
from typing import Any


class Input:
    def __init__(self, properties: dict[str, str] | None = None, content: list[tuple[str, bytes]] | None = None):
        self.properties: dict[str, str] = dict(properties or {})
        self.content: list[tuple[str, bytes]] = list(content or [])

    # --- what DJL offers -------------------------------------------------------------------------
    def get_property(self, key: str) -> str | None:
        return next((v for k, v in self.properties.items() if k.lower() == key.lower()), None)

    def get_properties(self) -> dict[str, str]:
        return self.properties

    def contains_key(self, key: str) -> bool:
        """A content entry named ``key`` (adapter options such as ``preload`` travel as content)."""
        return any(k == key for k, _ in self.content)

    def get_as_bytes(self, key: str | None = None) -> bytes | None:
        if not self.content:
            return None
        if key:
            for k, v in self.content:
                if k == key:
                    return v
            raise KeyError(f"requested data for key:{key} is not found!")
        for k, v in self.content:
            if k == "data":
                return v
        return self.content[0][1]

    def get_as_string(self, key: str | None = None) -> str:
        data = self.get_as_bytes(key)
        assert data is not None
        return data.decode("utf-8")

    def get_as_json(self, key: str | None = None) -> Any:
        return json.loads(self.get_as_string(key))

    def is_empty(self) -> bool:
        return not self.content

    def is_batch(self) -> bool:
        return "batch_size" in self.properties

    def get_batch_size(self) -> int:
        return int(self.properties.get("batch_size", "1"))

    def get_batches(self) -> list[Input]:
        """As the real one parses them: ``batch_000.<key>``, the index in characters 6-8, the key from 10."""
        if not self.is_batch():
            return [self]
        batch = [Input() for _ in range(self.get_batch_size())]
        for key, value in self.properties.items():
            if key.startswith("batch_") and key != "batch_size":
                batch[int(key[6:9])].properties[key[10:]] = value
        for content_key, data in self.content:
            batch[int(content_key[6:9])].content.append((content_key[10:], data))
        return batch


def request(body: bytes | str, **headers: str) -> Input:
    """A request call as DJL sends it: headers as properties, the body as content key ``data``."""
    data = body.encode() if isinstance(body, str) else body
    props = {k.replace("_", "-"): v for k, v in headers.items()}
    props.setdefault("requestId", "test-request")
    return Input(props, [("data", data)])


def batch_prefix(index: int) -> str:
    """DJL's PyPredictor key prefix for batch item ``index``: three digits (``batch_000.``), more past 999."""
    return f"batch_{index:03d}."


def batch(*items: Input) -> Input:
    """Several requests in one call, keyed ``batch_000.<key>`` as DJL's PyPredictor does."""
    out = Input({"batch_size": str(len(items))})
    for i, item in enumerate(items):
        for k, v in item.properties.items():
            out.properties[batch_prefix(i) + k] = v
        for content_key, data in item.content:
            out.content.append((batch_prefix(i) + content_key, data))
    return out
