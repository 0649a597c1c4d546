"""The adapter routes (POST /adapters, DELETE /adapters/{name}, .../update, GET /v1/models) and the runtime
API's InferenceComponentName, over HTTP in both DJL modes, against a stand-in entry module that follows
the handler's contract (``fake_adapter_entry``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from lora_endpoint.local.app import create_app
from lora_endpoint.local.package import ServedModel, resolve

from . import fake_adapter_entry as fake
from .conftest import Running, fake_served, start

ALIAS = "X-Amzn-SageMaker-Adapter-Alias"


@pytest.fixture(scope="module", params=["async", "sync"])
def adapter_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    pkg = fake.write_package(tmp_path_factory.mktemp("fake") / request.param, request.param)
    spec = resolve(pkg, allow_no_manifest=True)
    running = start(create_app(ServedModel.from_spec(spec), endpoint_name="lora-local"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def server(adapter_server: Running) -> Running:
    """The fake's adapters and the server's registry as after start-up: only ``packaged``."""
    fake._init()
    adapter_server.app.state.adapters.registrations.clear()
    adapter_server.app.state.adapters._served_names.clear()
    return adapter_server


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "support"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    return folder


def register(server: Running, body: Any = None, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + "/adapters", json=body, timeout=30, **kwargs)


def calls(handler: str | None) -> list[dict[str, Any]]:
    return [c for c in fake.CALLS if c["properties"].get("handler") == handler]


def runtime_client(server: Running) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"max_attempts": 1}))


def test_register_sends_djl_s_input_and_answers_its_status(server: Running, adapter_dir: Path) -> None:
    response = register(server, {"name": "support", "src": str(adapter_dir)})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Adapter support registered"
    assert response.json()["adapter"]["name"] == "support"
    (call,) = calls("register_adapter")
    assert call["properties"] == {"handler": "register_adapter", "name": "support", "alias": "support",
                                  "src": str(adapter_dir)}
    assert call["content"] == {"preload": "true", "pin": "false"}  # options are content, as DJL sends them


def test_alias_header_and_query_parameter_form(server: Running, adapter_dir: Path) -> None:
    # GIVEN DJL's management API form: fields as query parameters, no body
    response = httpx.post(server.url + "/adapters", params={"name": "support", "src": str(adapter_dir),
                                                           "pin": "TRUE", "preload": "false"},
                          headers={ALIAS: "Support v2"}, timeout=30)
    # THEN the alias reaches the handler and the message
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Adapter Support v2 registered"
    (call,) = calls("register_adapter")
    assert call["properties"]["alias"] == "Support v2"
    assert call["content"] == {"preload": "false", "pin": "true"}


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"src": "/x"}, 400, "name"),
    ({"name": "a"}, 400, "src"),
    ({"name": "", "src": "/x"}, 400, "name"),
    ({"name": 7, "src": "/x"}, 400, "name"),
    ({"name": "a", "src": ["/x"]}, 400, "src"),
    ({"name": "a", "src": "/x", "preload": "yes"}, 400, "preload"),
    ({"name": "a", "src": "/x", "pin": 1}, 400, "pin"),
    ({"name": "a", "src": "/x", "pinned": True}, 400, "pinned"),
])
def test_bad_registration_bodies_are_refused_before_the_handler(server: Running, body: Any, status: int,
                                                                param: str) -> None:
    response = register(server, body)
    assert response.status_code == status
    assert response.json()["type"] == "invalid_request"
    assert response.json()["error"]["param"] == param
    assert calls("register_adapter") == []


@pytest.mark.parametrize(("content", "headers", "status", "kind"), [
    (b"[1, 2]", {"Content-Type": "application/json"}, 400, "invalid_request"),
    (b"{name: a}", {"Content-Type": "application/json"}, 400, "invalid_request"),
    (b'{"name": "a", "src": "/x"}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    (json.dumps({"name": "a", "src": "x" * 100_000}).encode(), {"Content-Type": "application/json"}, 413,
     "payload_too_large"),
])
def test_malformed_or_huge_bodies_get_a_clear_4xx(server: Running, content: bytes, headers: dict[str, str],
                                                   status: int, kind: str) -> None:
    response = httpx.post(server.url + "/adapters", content=content, headers=headers, timeout=30)
    assert response.status_code == status
    assert response.json()["type"] == kind
    assert calls("register_adapter") == []


def test_body_and_query_together_is_refused(server: Running, adapter_dir: Path) -> None:
    response = register(server, {"name": "a", "src": str(adapter_dir)}, params={"pin": "true"})
    assert response.status_code == 400 and "not both" in response.json()["message"]


def test_handler_refusals_reach_the_caller_with_its_status_and_type(server: Running, adapter_dir: Path,
                                                                    tmp_path: Path) -> None:
    bad_src = register(server, {"name": "support", "src": str(tmp_path / "missing")})
    assert bad_src.status_code == 400
    assert bad_src.json()["type"] == "invalid_adapter" and "not an adapter folder" in bad_src.json()["message"]
    bad_name = register(server, {"name": "../etc", "src": str(adapter_dir)})
    assert bad_name.status_code == 400 and bad_name.json()["error"]["type"] == "invalid_adapter"
    # GIVEN a registered adapter
    assert register(server, {"name": "support", "src": str(adapter_dir)}).status_code == 200
    # WHEN the name comes again with another src THEN the handler's 409 comes back, and the first stays
    other = adapter_dir.parent / "other"
    other.mkdir()
    (other / "adapter_config.json").write_text("{}")
    conflict = register(server, {"name": "support", "src": str(other)})
    assert conflict.status_code == 409 and conflict.json()["type"] == "adapter_conflict"
    assert fake.ADAPTERS["support"]["src"] == str(adapter_dir)


def test_the_base_component_s_name_cannot_be_an_adapter(server: Running, adapter_dir: Path) -> None:
    response = register(server, {"name": "lora-local-base", "src": str(adapter_dir)})
    assert response.status_code == 409 and response.json()["type"] == "adapter_conflict"
    assert calls("register_adapter") == []


def test_unregister_then_unknown_is_404(server: Running, adapter_dir: Path) -> None:
    assert register(server, {"name": "support", "src": str(adapter_dir)}).status_code == 200
    gone = httpx.delete(server.url + "/adapters/support", headers={ALIAS: "Support"}, timeout=30)
    assert gone.status_code == 200 and gone.json()["status"] == "Adapter Support unregistered"
    (call,) = calls("unregister_adapter")
    assert call["properties"] == {"handler": "unregister_adapter", "name": "support", "alias": "Support"}
    assert call["content"] == {}
    again = httpx.delete(server.url + "/adapters/support", timeout=30)
    assert again.status_code == 404 and again.json()["type"] == "unknown_adapter"


def test_update_resends_src_and_lays_new_options_over_the_old(server: Running, adapter_dir: Path) -> None:
    assert register(server, {"name": "support", "src": str(adapter_dir), "pin": True}).status_code == 200
    response = httpx.post(server.url + "/adapters/support/update", json={"preload": False}, timeout=30)
    assert response.status_code == 200 and response.json()["status"] == "Adapter support updated"
    (call,) = calls("update_adapter")
    assert call["properties"] == {"handler": "update_adapter", "name": "support", "alias": "support",
                                  "src": str(adapter_dir)}
    assert call["content"] == {"preload": "false", "pin": "true"}
    # a packaged adapter keeps the src DJL registered it with at start
    packaged = httpx.post(server.url + "/adapters/packaged/update", params={"pin": "true"}, timeout=30)
    assert packaged.status_code == 200, packaged.text
    assert calls("update_adapter")[-1]["properties"]["src"].endswith("adapters/packaged")
    for name in ("nobody", "%2E%2E"):  # "..": no folder of the package, though adapters/.. exists
        unknown = httpx.post(f"{server.url}/adapters/{name}/update", json={"pin": True}, timeout=30)
        assert unknown.status_code == 404 and unknown.json()["type"] == "unknown_adapter"
    assert len(calls("update_adapter")) == 2


def test_v1_models_lists_the_base_and_every_adapter(server: Running, adapter_dir: Path) -> None:
    register(server, {"name": "support", "src": str(adapter_dir)})
    listing = httpx.get(server.url + "/v1/models", timeout=30).json()
    assert listing["object"] == "list"
    assert [(m["id"], m["parent"]) for m in listing["data"]] == [
        (fake.BASE, None), ("packaged", fake.BASE), ("support", fake.BASE)]
    assert all(m["object"] == "model" and m["owned_by"] and isinstance(m["created"], int) for m in listing["data"])
    assert listing["data"][0]["max_model_len"] == 128


def test_inference_component_selects_adapter_or_base(server: Running, adapter_dir: Path) -> None:
    runtime = runtime_client(server)
    register(server, {"name": "support", "src": str(adapter_dir)})

    def adapter_seen(**kwargs: Any) -> Any:
        answer = runtime.invoke_endpoint(EndpointName="lora-local", ContentType="application/json",
                                         Body=b'{"inputs": "Hi"}', **kwargs)
        return json.loads(answer["Body"].read())["adapter"]

    assert adapter_seen(InferenceComponentName="support") == "support"
    assert adapter_seen(InferenceComponentName="packaged") == "packaged"  # the package's own, from model info
    assert adapter_seen(InferenceComponentName="lora-local-base") is None
    assert adapter_seen() is None
    stream = runtime.invoke_endpoint_with_response_stream(
        EndpointName="lora-local", ContentType="application/json", Body=b'{"inputs": "Hi"}',
        InferenceComponentName="support")
    body = b"".join(event["PayloadPart"]["Bytes"] for event in stream["Body"])
    assert json.loads(body)["adapter"] == "support"
    header = calls(None)  # requests carry no "handler" property
    assert header[-1]["properties"]["X-Amzn-SageMaker-Adapter-Identifier"] == "support"


def test_the_base_component_ignores_an_adapter_header_from_the_caller(server: Running, adapter_dir: Path) -> None:
    register(server, {"name": "support", "src": str(adapter_dir)})
    response = httpx.post(server.url + "/endpoints/lora-local/invocations", content=b'{"inputs": "Hi"}',
                          headers={"Content-Type": "application/json",
                                   "X-Amzn-SageMaker-Inference-Component": "lora-local-base",
                                   "X-Amzn-SageMaker-Adapter-Identifier": "support"}, timeout=30)
    assert response.status_code == 200 and response.json()["adapter"] is None


@pytest.mark.parametrize("name", ["nobody", "bad_name", "x" * 64])
def test_unknown_or_malformed_component_is_a_validation_error(server: Running, name: str) -> None:
    runtime = runtime_client(server)
    for call in (runtime.invoke_endpoint, runtime.invoke_endpoint_with_response_stream):
        with pytest.raises(ClientError) as caught:
            call(EndpointName="lora-local", ContentType="application/json", Body=b'{"inputs": "Hi"}',
                 InferenceComponentName=name)
        assert caught.value.response["Error"]["Code"] == "ValidationError"
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_an_unregistered_adapter_s_component_is_gone(server: Running, adapter_dir: Path) -> None:
    runtime = runtime_client(server)
    register(server, {"name": "support", "src": str(adapter_dir)})
    httpx.delete(server.url + "/adapters/support", timeout=30)
    with pytest.raises(ClientError) as caught:
        runtime.invoke_endpoint(EndpointName="lora-local", Body=b'{"inputs": "Hi"}', InferenceComponentName="support")
    assert caught.value.response["Error"]["Code"] == "ValidationError"


# --- packages that cannot take adapters ----------------------------------------------------------------


def test_a_package_without_the_functions_answers_501() -> None:
    async def handle(inputs: Any) -> Any:
        return None

    running = start(create_app(fake_served(handle)))
    try:
        for response in (register(running, {"name": "a", "src": "/x"}),
                         httpx.delete(running.url + "/adapters/a", timeout=30),
                         httpx.post(running.url + "/adapters/a/update", json={"src": "/x"}, timeout=30)):
            assert response.status_code == 501, response.text
            assert response.json()["type"] == "not_implemented"
    finally:
        running.stop()


def test_an_adapter_function_of_the_wrong_kind_for_the_mode_is_a_clear_500(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(
        "from tests.local.fake_adapter_entry import handle, register_adapter_sync as register_adapter\n")
    (tmp_path / "serving.properties").write_text("engine=Python\noption.async_mode=true\n")
    running = start(create_app(ServedModel.from_spec(resolve(tmp_path, allow_no_manifest=True))))
    try:
        response = register(running, {"name": "a", "src": "/x"})
        assert response.status_code == 500
        assert "plain function" in response.json()["message"] and "async mode" in response.json()["message"]
    finally:
        running.stop()


def test_adapter_routes_wait_for_the_model(tmp_path: Path) -> None:
    import threading

    loaded = threading.Event()

    async def handle(inputs: Any) -> Any:
        import asyncio

        await asyncio.to_thread(loaded.wait, 30)  # the init call: the model is still loading
        return None

    running = start(create_app(fake_served(handle)), wait_ready=False)
    try:
        for response in (register(running, {"name": "a", "src": "/x"}), httpx.get(running.url + "/v1/models")):
            assert response.status_code == 503 and response.json()["type"] == "model_not_ready"
    finally:
        loaded.set()
        running.stop()
