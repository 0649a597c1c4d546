"""The entry points: exact SageMaker signatures, and DJL handle() through the documented Input/Output API."""

from __future__ import annotations

import inspect
import json

import pytest

from lora_endpoint.handler import entry


@pytest.fixture
def served(djl, tiny_model_dir, monkeypatch):  # type: ignore[no-untyped-def]
    """handle() after its init call (empty body, option.* properties), as DJL starts a worker."""
    from djl_python.inputs import Input

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    init = Input(
        {
            "model_dir": str(tiny_model_dir),
            "entryPoint": "model.py",
            "max_new_tokens": "64",
            "default_max_new_tokens": "8",
        }
    )
    assert entry.handle_sync(init) is None
    return entry


def call(body, **headers):  # type: ignore[no-untyped-def]
    from djl_python.inputs import request

    headers.setdefault("Content_Type", "application/json")
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return entry.handle_sync(request(raw, **headers))


def test_sagemaker_functions_keep_the_parameter_names_djl_matches() -> None:
    names = {
        fn: list(inspect.signature(getattr(entry, fn)).parameters)
        for fn in ("model_fn", "input_fn", "predict_fn", "output_fn", "handle")
    }
    assert names == {
        "model_fn": ["model_dir"],
        "input_fn": ["request_body", "content_type"],
        "predict_fn": ["input_data", "model"],
        "output_fn": ["prediction", "accept"],
        "handle": ["inputs"],
    }


def test_toolkit_chain_model_input_predict_output(tiny_model_dir, monkeypatch) -> None:
    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    model = entry.model_fn(str(tiny_model_dir))
    request = entry.input_fn(
        json.dumps({"inputs": ["Hello", "Hi"], "parameters": {"max_new_tokens": 4}}), "application/json"
    )
    body = json.loads(entry.output_fn(entry.predict_fn(request, model), "application/json"))
    assert isinstance(body, list) and len(body) == 2
    assert body[0]["details"]["generated_tokens"] <= 4


def test_model_fn_reads_serving_properties_options(tiny_model_dir, tmp_path, monkeypatch) -> None:
    # GIVEN a package whose serving.properties sets handler options (the toolkit never passes them)
    import shutil

    package = tmp_path / "pkg"
    shutil.copytree(tiny_model_dir, package)
    (package / "serving.properties").write_text(
        "engine=Python\noption.entryPoint=model.py\noption.default_max_new_tokens=3\noption.default_adapter=beta\n"
    )
    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    model = entry.model_fn(str(package))
    assert model.settings.default_adapter == "beta"
    body = json.loads(entry.output_fn(entry.predict_fn(entry.input_fn('{"inputs": "Hi"}', "application/json"), model),
                                      "application/json"))
    assert body["details"]["generated_tokens"] <= 3


def test_init_then_request(served) -> None:
    out = call({"inputs": "Hello world", "adapters": "alpha"})
    assert out.code == 200
    body = out.json()
    assert set(body) == {"generated_text", "details"}
    assert body["details"]["generated_tokens"] <= 8  # default_max_new_tokens from the init call's options
    assert body["details"]["finish_reason"] in ("length", "eos_token")


def test_adapter_header_selects_the_adapter(served) -> None:
    params = {"max_new_tokens": 10}
    by_body = call({"inputs": "Hello world", "adapters": "beta", "parameters": params}).json()
    by_header = call({"inputs": "Hello world", "parameters": params}, X_Amzn_SageMaker_Adapter_Identifier="beta").json()
    base = call({"inputs": "Hello world", "parameters": params}).json()
    assert by_body == by_header
    assert by_header["generated_text"] != base["generated_text"]


def test_batch_call_routes_each_item_and_matches_single_calls(served) -> None:
    from djl_python.inputs import batch, request

    bodies = [
        {"inputs": "Hello world", "parameters": {"max_new_tokens": 6}},
        {"inputs": "Hello world", "adapters": "alpha", "parameters": {"max_new_tokens": 6}},
        {"inputs": "The quick", "adapters": "beta", "parameters": {"max_new_tokens": 3}},
    ]
    singles = [call(b).json() for b in bodies]
    out = entry.handle_sync(batch(*(request(json.dumps(b), Content_Type="application/json") for b in bodies)))
    assert out.code == 200
    assert [key for key, _ in out.content] == ["batch_0.data", "batch_1.data", "batch_2.data"]
    assert [out.json(i) for i in range(3)] == singles


def test_batch_with_one_bad_item_answers_the_others(served) -> None:
    from djl_python.inputs import batch, request

    good = request(json.dumps({"inputs": "Hello"}), Content_Type="application/json")
    bad = request(json.dumps({"inputs": "Hello", "adapters": "nope"}), Content_Type="application/json")
    out = entry.handle_sync(batch(good, bad))
    assert out.json(0)["generated_text"] is not None
    assert out.json(1)["type"] == "unknown_adapter" and out.json(1)["code"] == 404


@pytest.mark.parametrize(
    ("body", "headers", "status", "kind", "needle"),
    [
        ("{not json", {}, 400, "invalid_request", "not valid JSON"),
        ({"inputs": ""}, {}, 400, "invalid_request", "inputs must not be empty"),
        ({"parameters": {}}, {}, 400, "invalid_request", "request must have one of"),
        (
            {"inputs": "hi", "parameters": {"max_new_tokens": 0}},
            {},
            400,
            "invalid_request",
            "parameters.max_new_tokens must be 1..64, got 0",
        ),
        ({"inputs": "hi", "parameters": {"temperature": 9}}, {}, 400, "invalid_request", "parameters.temperature"),
        (
            '{"inputs": "hi", "parameters": {"temperature": NaN}}',
            {},
            400,
            "invalid_request",
            "parameters.temperature must be a finite number, got nan",
        ),
        ('{"inputs": "hi", "parameters": {"top_p": Infinity}}', {}, 400, "invalid_request", "parameters.top_p"),
        ("[" * 100_000 + "]" * 100_000, {}, 400, "invalid_request", "nested more than 32 levels deep"),
        (
            {"inputs": "hi", "parameters": {"bogus": 1}},
            {},
            400,
            "invalid_request",
            "unknown field in parameters: bogus",
        ),
        ({"inputs": "hi", "adapters": "gamma"}, {}, 404, "unknown_adapter", "'gamma' is not served"),
        ({"inputs": "word " * 300}, {}, 400, "context_length_exceeded", "exceeds the model's context of 256"),
        ({"inputs": "hi"}, {"Content_Type": "text/plain"}, 415, "unsupported_media_type", "application/json"),
        ({"inputs": "hi"}, {"Accept": "text/csv"}, 406, "not_acceptable", "Accept"),
        ({"inputs": "x" * (7 * 1024 * 1024)}, {}, 413, "payload_too_large", "limit is 6291456"),
    ],
)
def test_bad_input_gets_its_status_and_a_clear_message(served, body, headers, status, kind, needle) -> None:
    out = call(body, **headers)
    assert out.code == status
    error = out.json()
    assert error["type"] == kind and error["error"]["type"] == kind
    assert needle in error["message"]
    assert "Traceback" not in error["message"]
    # the worker keeps serving afterwards
    assert call({"inputs": "Hello"}).code == 200


def test_unexpected_failure_is_a_generic_500_logged_with_the_request_id(served, monkeypatch, caplog) -> None:
    def boom(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(entry.service, "run", boom)
    out = call({"inputs": "Hello"}, requestId="req-42")
    assert out.code == 500
    assert out.json()["type"] == "internal_error"
    assert "secret" not in out.body().decode()
    assert any("req-42" in r.getMessage() and r.exc_info for r in caplog.records)


def test_streaming_yields_the_same_text_as_the_plain_call(served) -> None:
    plain = call({"inputs": "Hello world", "adapters": "alpha", "parameters": {"max_new_tokens": 12}}).json()
    out = call({"inputs": "Hello world", "adapters": "alpha", "parameters": {"max_new_tokens": 12}, "stream": True})
    assert out.properties["Content-Type"] == "application/jsonlines"
    lines = [json.loads(line) for line in out.streamed().decode().splitlines()]
    assert "".join(line["token"]["text"] for line in lines) == plain["generated_text"]
    assert lines[-1]["generated_text"] == plain["generated_text"]
    assert all("generated_text" not in line for line in lines[:-1])


def test_register_adapter_accepts_packaged_adapters_and_refuses_others(served) -> None:
    import asyncio

    from djl_python.inputs import Input

    known = asyncio.run(entry.register_adapter(Input({"name": "alpha", "src": "/opt/ml/model/adapters/alpha"})))
    assert "code" not in known.record()
    refused = asyncio.run(entry.register_adapter(Input({"name": "zeta", "src": "/elsewhere"}))).record()
    assert refused["code"] == "400" and refused["error"].startswith("invalid_adapter: ")
