"""DJL async mode: ``async def handle`` through init, request, stream and error calls, its Outputs
encoded as the frontend reads them (``binary_encode``d records; djl-serving ``Request.addResponse``)."""

from __future__ import annotations

import asyncio
import json

import pytest

from lora_endpoint.handler import entry


@pytest.fixture
def served(djl, tiny_model_dir, monkeypatch):  # type: ignore[no-untyped-def]
    from djl_python.inputs import Input

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    assert asyncio.run(entry.handle(Input({"model_dir": str(tiny_model_dir), "max_new_tokens": "64"}))) is None
    return entry


def request(body, **headers):  # type: ignore[no-untyped-def]
    from djl_python.inputs import request as make

    headers.setdefault("Content_Type", "application/json")
    return make(body if isinstance(body, str) else json.dumps(body), **headers)


async def answer(body, **headers):  # type: ignore[no-untyped-def]
    """What the frontend makes of one call: (status, headers, body)."""
    out = await entry.handle(request(body, **headers))
    if hasattr(out, "__aiter__"):
        records, properties = [], {}
        async for chunk in out:
            properties.update(chunk.properties)
            records.append(chunk.record())
        assert [r["last"] for r in records] == ["False"] * (len(records) - 1) + ["True"]
        return 200, properties, "".join(r["data"] for r in records)
    record = out.record()
    assert record["last"] == "True"
    if "code" in record:  # the frontend writes the body itself
        return int(record["code"]), out.properties, json.dumps({"code": int(record["code"]), "error": record["error"]})
    return 200, out.properties, record["data"]


GENERATE = {"inputs": "Hello", "adapters": "alpha", "parameters": {"max_new_tokens": 6, "do_sample": False}}


def test_a_request_answers_as_in_sync_mode(served) -> None:
    status, headers, body = asyncio.run(answer(GENERATE))
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == entry.handle_sync(request(GENERATE)).json()


def test_a_stream_is_an_async_generator_of_chunks(served) -> None:
    status, headers, body = asyncio.run(answer({**GENERATE, "stream": True}))
    assert status == 200 and headers["Content-Type"] == "application/jsonlines"
    assert body.encode() == entry.handle_sync(request({**GENERATE, "stream": True})).streamed()
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True, "temperature": 0}
    status, headers, body = asyncio.run(answer(chat))
    assert headers["Content-Type"] == "text/event-stream" and body.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"inputs": "Hi", "parameters": {"max_new_tokens": 0}}, 400, "invalid_request"),
    ({"inputs": "Hi", "adapters": "nope"}, 404, "unknown_adapter"),
    ("{not json", 400, "invalid_request"),
])
def test_an_error_carries_its_own_status_and_type(served, body, status, kind) -> None:
    got, _, text = asyncio.run(answer(body))
    assert got == status and json.loads(text)["error"].startswith(f"{kind}: ")


def test_concurrent_calls_are_each_answered_alone(served) -> None:
    bodies = [GENERATE, {"inputs": "Hi", "adapters": "nope"}, {**GENERATE, "adapters": "beta"},
              {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "do_sample": False}}]

    async def together():  # type: ignore[no-untyped-def]
        return await asyncio.gather(*(answer(b) for b in bodies))

    results = asyncio.run(together())
    assert [status for status, _, _ in results] == [200, 404, 200, 200]
    for body, (status, _, text) in zip(bodies, results, strict=True):
        if status == 200:
            assert json.loads(text) == entry.handle_sync(request(body)).json()


def test_overload_is_a_429_with_retry_after(served, monkeypatch) -> None:
    from lora_endpoint.contract.errors import ModelOverloaded
    from lora_endpoint.handler.engine import engine_for

    engine = engine_for(entry._runtime.model)

    def full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise ModelOverloaded("the endpoint is at capacity; retry in a moment")

    monkeypatch.setattr(engine, "submit", full)
    status, headers, text = asyncio.run(answer(GENERATE))
    assert status == 429 and headers["Retry-After"] == "1"
    assert json.loads(text)["error"].startswith("model_overloaded: ")
