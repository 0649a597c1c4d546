"""The SageMaker runtime API, driven by unchanged boto3 (botocore parses every answer and event frame)."""

from __future__ import annotations

import json

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer
from botocore.exceptions import ClientError, EventStreamError

from lora_endpoint.local import eventstream

from .conftest import error_type

GREEDY = {"max_new_tokens": 12, "do_sample": False}


def invoke(runtime, body, **kwargs):  # type: ignore[no-untyped-def]
    response = runtime.invoke_endpoint(EndpointName="lora-local", Body=json.dumps(body),
                                       ContentType="application/json", **kwargs)
    return response, json.loads(response["Body"].read())


def with_adapter_header(runtime, name):  # type: ignore[no-untyped-def]
    def add(request, **_):  # type: ignore[no-untyped-def]
        request.headers["X-Amzn-SageMaker-Adapter-Identifier"] = name
    runtime.meta.events.register_first("before-sign.sagemaker-runtime.InvokeEndpoint", add, unique_id="adapter")
    return lambda: runtime.meta.events.unregister("before-sign.sagemaker-runtime.InvokeEndpoint", unique_id="adapter")


def test_invoke_endpoint_answers_with_the_runtime_headers(runtime) -> None:
    response, body = invoke(runtime, {"inputs": "Hello", "parameters": GREEDY}, CustomAttributes="trace=1; user=a")
    assert response["ContentType"] == "application/json"
    assert response["InvokedProductionVariant"] == "AllTraffic"
    assert set(body) == {"generated_text", "details"}


def test_adapter_header_selects_the_adapter(runtime) -> None:
    _, by_body = invoke(runtime, {"inputs": "Hello", "adapters": "beta", "parameters": GREEDY})
    _, base = invoke(runtime, {"inputs": "Hello", "parameters": GREEDY})
    remove = with_adapter_header(runtime, "beta")
    try:
        _, by_header = invoke(runtime, {"inputs": "Hello", "parameters": GREEDY})
    finally:
        remove()
    assert by_header == by_body
    assert by_header["generated_text"] != base["generated_text"]


@pytest.mark.parametrize(("body", "status", "kind"), [
    ({"inputs": "Hello", "adapters": "nope"}, 404, "unknown_adapter"),
    ({"inputs": "Hello", "parameters": {"max_new_tokens": 0}}, 400, "invalid_request"),
])
def test_container_errors_are_model_errors_with_the_original_status(runtime, body, status, kind) -> None:
    with pytest.raises(ClientError) as caught:
        invoke(runtime, body)
    response = caught.value.response
    assert response["Error"]["Code"] == "ModelError"
    assert response["ResponseMetadata"]["HTTPStatusCode"] == 424
    assert response["OriginalStatusCode"] == status
    assert error_type(json.loads(response["OriginalMessage"])) == kind
    assert response["LogStreamArn"].startswith("arn:aws:logs:")


def test_unknown_endpoint_name_is_a_validation_error(runtime) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="someone-else", Body=b"{}", ContentType="application/json")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_response_stream_parts_rebuild_the_non_streamed_answer(runtime) -> None:
    # GIVEN a greedy answer
    _, whole = invoke(runtime, {"inputs": "Hello there", "parameters": GREEDY})
    # WHEN the same request streams
    response = runtime.invoke_endpoint_with_response_stream(
        EndpointName="lora-local", ContentType="application/json",
        Body=json.dumps({"inputs": "Hello there", "parameters": GREEDY, "stream": True}))
    parts = [event["PayloadPart"]["Bytes"] for event in response["Body"]]
    # THEN botocore parsed PayloadPart events whose JSON lines rebuild the text
    assert response["ContentType"] == "application/jsonlines"
    assert len(parts) == whole["details"]["generated_tokens"]
    lines = [json.loads(line) for line in b"".join(parts).splitlines()]
    assert "".join(line["token"]["text"] for line in lines) == whole["generated_text"]
    assert lines[-1]["generated_text"] == whole["generated_text"]


def test_response_stream_error_before_the_first_byte_is_a_model_error(runtime) -> None:
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint_with_response_stream(
            EndpointName="lora-local", ContentType="application/json",
            Body=json.dumps({"inputs": "Hello", "adapters": "nope", "stream": True}))
    assert caught.value.response["Error"]["Code"] == "ModelError"
    assert caught.value.response["OriginalStatusCode"] == 404


def _parse(frames: bytes) -> list:  # type: ignore[type-arg]
    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    return list(buffer)


def test_frames_parse_with_botocore_and_a_corrupt_frame_fails() -> None:
    frame = eventstream.payload_part(b"hello")
    (message,) = _parse(frame)
    assert message.headers[":event-type"] == "PayloadPart"
    assert message.payload == b"hello"
    corrupt = bytearray(frame)
    corrupt[-6] ^= 0xFF  # a payload byte: the message CRC no longer matches
    with pytest.raises(ChecksumMismatch):
        _parse(bytes(corrupt))
    bad_prelude = bytearray(frame)
    bad_prelude[9] ^= 0xFF  # the prelude CRC itself
    with pytest.raises(ChecksumMismatch):
        _parse(bytes(bad_prelude))


def test_model_stream_error_event_raises_in_botocore() -> None:
    from botocore.eventstream import EventStream
    from botocore.loaders import Loader
    from botocore.model import ServiceModel
    from botocore.parsers import EventStreamJSONParser

    model = ServiceModel(Loader().load_service_model("sagemaker-runtime", "service-2"))
    shape = model.operation_model("InvokeEndpointWithResponseStream").output_shape.members["Body"]

    class Raw:
        def stream(self):  # type: ignore[no-untyped-def]
            yield eventstream.payload_part(b"a") + eventstream.model_stream_error("boom", "500")

    events = EventStream(Raw(), shape, EventStreamJSONParser(), "InvokeEndpointWithResponseStream")
    iterator = iter(events)
    assert next(iterator) == {"PayloadPart": {"Bytes": b"a"}}
    with pytest.raises(EventStreamError) as caught:
        next(iterator)
    assert caught.value.response["Error"] == {"Code": "ModelStreamError", "Message": "boom"}
