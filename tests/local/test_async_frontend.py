"""The async frontend reads a handler's Outputs as djl-serving's does (``Request.addResponse``,
``AsyncRequestManager``, ``python_async_engine``): records, codes, skipped records, streams, failures."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from lora_endpoint.local import async_frontend, djl_io
from lora_endpoint.local.djl_io import Answer, Call
from lora_endpoint.local.streaming import pump_answer

from .conftest import fake_served

JSON_LINES = "application/jsonlines"


def output_cls() -> Any:
    """``djl_python.Output`` as the server sees it now (other tests reload the stand-in module)."""
    return djl_io.ensure_djl_python().Output


def out(data: str = "", last: bool = True, **extra: Any) -> Any:
    """An async-mode Output as the handler writes it; ``header_*`` keyword arguments become properties."""
    output = output_cls()()
    for key, value in list(extra.items()):
        if key.startswith("header_"):
            output.add_property(key[len("header_"):].replace("_", "-"), value)
            del extra[key]
    output.add(output_cls().binary_encode({"data": data, "last": last, **extra}))
    return output


def answer_of(handle: Callable[[Any], Any]) -> Answer:
    call = Call.from_http({"Content-Type": "application/json"}, b"{}", model_dir="/m")
    return asyncio.run(async_frontend.answer(fake_served(handle), call))


def streamed(handle: Callable[[Any], Any]) -> tuple[Answer, list[bytes]]:
    """The answer and every chunk of its stream, read on one loop."""

    async def run() -> tuple[Answer, list[bytes]]:
        call = Call.from_http({}, b"{}", model_dir="/m")
        answer = await async_frontend.answer(fake_served(handle), call)
        assert answer.stream is not None
        return answer, [chunk async for chunk in pump_answer(answer)]

    return asyncio.run(run())


class Gen:
    """An async generator of Outputs that records whether it was closed."""

    def __init__(self, *outputs: Any, fail: bool = False) -> None:
        self.outputs, self.fail, self.closed = outputs, fail, False

    async def handle(self, inputs: Any) -> AsyncIterator[Any]:
        return self.run()

    async def run(self) -> AsyncIterator[Any]:
        try:
            for output in self.outputs:
                yield output
            if self.fail:
                raise RuntimeError("the GPU caught fire")
        finally:
            self.closed = True


def test_a_whole_answer_is_the_record_s_data_with_the_output_s_properties_as_headers() -> None:
    async def handle(inputs: Any) -> Any:
        return out('{"generated_text": "hi"}', header_Content_Type="application/json", header_X_Extra="1")

    answer = answer_of(handle)
    assert (answer.status, answer.stream, answer.json()) == (200, None, {"generated_text": "hi"})
    assert answer.headers == {"Content-Type": "application/json", "X-Extra": "1"}


def test_a_record_with_a_code_is_that_status_and_the_frontend_s_body_with_the_headers() -> None:
    async def handle(inputs: Any) -> Any:
        return out("", True, code=429, error="model_overloaded: busy", header_Retry_After="5")

    answer = answer_of(handle)
    assert (answer.status, answer.json()) == (429, {"code": 429, "error": "model_overloaded: busy"})
    assert answer.headers["Retry-After"] == "5"


async def _none(inputs: Any) -> None:
    return None


async def _raises(inputs: Any) -> Any:
    raise ValueError("secret detail")


async def _out_of_memory(inputs: Any) -> Any:
    raise MemoryError("no room")


async def _a_dict(inputs: Any) -> Any:
    return {"not": "an Output"}


async def _own_code(inputs: Any) -> Any:
    return output_cls()(code=503, message="warming up")


def _not_async(inputs: Any) -> Any:  # awaiting its Output raises TypeError, as in DJL's async engine
    return out("x")


@pytest.mark.parametrize(("handle", "status", "message"), [
    (_none, 204, None),
    (_raises, 424, "Async Inference Failure service.invoke_handler_async() failure"),
    (_out_of_memory, 507, "Async Inference Failure no room"),
    (_a_dict, 424, "Async Inference Failure prediction failure"),
    (_own_code, 503, "Async Inference Failure warming up"),
    (_not_async, 424, "Async Inference Failure service.invoke_handler_async() failure"),
])
def test_what_is_not_a_record_is_answered_as_the_frontend_answers_it(handle: Any, status: int,
                                                                     message: str | None) -> None:
    answer = answer_of(handle)
    assert answer.status == status
    assert (answer.body == b"") if message is None else answer.json() == {"code": status, "message": message}


def test_stream_chunks_skip_empty_records_and_end_at_the_last_one() -> None:
    # GIVEN a generator with empty non-last records around its data, and an Output after the last
    gen = Gen(out("", False), out('{"i": 0}\n', False, header_Content_Type=JSON_LINES), out("", False),
              out('{"i": 1}\n', False), out("", True), out("never sent", True))
    answer, chunks = streamed(gen.handle)
    # THEN the status and headers are the first chunk's, the chunks are the data, nothing after the last
    assert (answer.status, answer.content_type) == (200, JSON_LINES)
    assert chunks == [b'{"i": 0}\n', b'{"i": 1}\n']
    assert gen.closed


def test_a_first_chunk_that_is_also_the_last_is_a_plain_answer() -> None:
    gen = Gen(out("", False), out('{"ok": true}', True, header_Content_Type="application/json"))
    answer = answer_of(gen.handle)
    assert (answer.status, answer.stream, answer.json()) == (200, None, {"ok": True})
    assert gen.closed


def test_a_code_after_the_first_chunk_ends_the_stream_with_the_frontend_s_body() -> None:
    gen = Gen(out("a\n", False), out("", True, code=500, error="internal_error: x"))
    answer, chunks = streamed(gen.handle)
    assert answer.status == 200  # sent with the first chunk already
    assert chunks[0] == b"a\n" and json.loads(chunks[1]) == {"code": 500, "error": "internal_error: x"}


@pytest.mark.parametrize("fail", [True, False], ids=["raises", "no-last-record"])
def test_a_generator_that_fails_mid_stream_ends_with_an_error_record(fail: bool) -> None:
    gen = Gen(out('{"i": 0}\n', False, header_Content_Type=JSON_LINES), fail=fail)
    _, chunks = streamed(gen.handle)
    assert chunks[0] == b'{"i": 0}\n'
    last = json.loads(chunks[-1])
    assert last["error"]["type"] == "internal_error" and last["details"]["finish_reason"] == "error"
    assert b"fire" not in b"".join(chunks)


def _unreadable() -> Any:
    output = output_cls()()
    output.add(b"\x00")
    return output


def _null_data() -> Any:
    output = output_cls()()  # a record whose value is null (length -1): Java's requireNonNull refuses it
    output.add(struct.pack(">h", 1) + struct.pack(">i", 4) + b"data" + struct.pack(">i", -1))
    return output


@pytest.mark.parametrize("gen", [
    Gen(out("", False)),  # ends without a last record (or any data)
    Gen(fail=True),  # raises before its first chunk
    Gen(_unreadable()),
    Gen(_null_data()),
    Gen(out("", True, code="x")),  # a code that is not a number
], ids=["no-last-record", "raises", "unreadable", "null-value", "bad-code"])
def test_what_djl_would_leave_unanswered_is_a_json_500_here(gen: Gen) -> None:
    answer = answer_of(gen.handle)
    assert answer.status == 500 and answer.json()["type"] == "internal_error"
    assert gen.closed


def test_one_output_that_does_not_end_the_response_is_a_json_500_here() -> None:
    async def handle(inputs: Any) -> Any:
        return out("partial", False)

    answer = answer_of(handle)
    assert answer.status == 500 and answer.json()["type"] == "internal_error"


def test_the_handler_gets_one_plain_request_input_as_djl_builds_it() -> None:
    seen: list[Any] = []

    async def handle(inputs: Any) -> Any:
        seen.append(inputs)
        return out("{}")

    call = Call.from_http({"Content-Type": "application/json", "X-Amzn-SageMaker-Custom-Attributes": "a=1"},
                          b'{"inputs": "x"}', model_dir="/m")
    asyncio.run(async_frontend.answer(fake_served(handle), call))
    (inputs,) = seen
    assert not inputs.is_batch() and inputs.get_as_json() == {"inputs": "x"}
    assert (inputs.get_property("a"), inputs.get_property("model_dir")) == ("1", "/m")
