"""``lora-endpoint playground``'s proxy: the page's calls forwarded to each kind of target - the local endpoint
(through its routes and through the SageMaker runtime API, against a running server), a deployed endpoint
through boto3 (botocore's Stubber checks every call against the service model), and API Gateway signed with
SigV4 - with the target's errors in the project's error body, and nothing answered to another host or site."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from lora_endpoint.clients.playground import create_proxy_app, models_from_info, target_info
from lora_endpoint.clients.target import HttpTarget, RuntimeTarget

from .conftest import Running

HOSTS = ("testserver",)  # TestClient's Host
PROMPT = {"inputs": "Hello there", "parameters": {"max_new_tokens": 6, "temperature": 0}}


@pytest.fixture(params=["routes", "runtime"])
def local_proxy(request: pytest.FixtureRequest, server: Running) -> TestClient:
    """The proxy in front of the running local endpoint: its API routes (--api-url) or its runtime API
    (--endpoint-url, boto3)."""
    if request.param == "routes":
        target: Any = HttpTarget(server.url)
    else:
        target = RuntimeTarget("lora-local", endpoint_url=server.url)
    return TestClient(create_proxy_app(target, hosts=HOSTS))


def _lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def test_the_model_list_comes_from_the_targets_info(local_proxy: TestClient, server: Running) -> None:
    listed = local_proxy.get("/v1/models").json()
    direct = httpx.get(server.url + "/v1/models").json()
    assert [(m["id"], m["parent"]) for m in listed["data"]] == [(m["id"], m["parent"]) for m in direct["data"]]
    assert [m["id"] for m in listed["data"]][1:] == ["alpha", "beta"]


def test_a_stream_is_forwarded_as_the_endpoint_sends_it(local_proxy: TestClient, server: Running) -> None:
    # GIVEN the answer the endpoint gives directly, greedy
    body = {**PROMPT, "adapters": "alpha"}
    direct = httpx.post(server.url + "/predict", json=body, timeout=60).json()
    # WHEN the page asks the proxy for the same, streamed
    with local_proxy.stream("POST", "/predict", json={**body, "stream": True}) as response:
        response.read()
    # THEN it comes as the endpoint's JSON lines, one per token, the last with the whole answer
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jsonlines")
    lines = _lines(response)
    assert len(lines) == direct["details"]["generated_tokens"]
    assert all("token" in line for line in lines)
    assert lines[-1]["generated_text"] == direct["generated_text"]


def test_chat_streams_server_sent_events(local_proxy: TestClient) -> None:
    body = {"model": "beta", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    with local_proxy.stream("POST", "/v1/chat/completions", json=body) as response:
        response.read()
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["usage"]["completion_tokens"] == 4


@pytest.mark.parametrize(("body", "status", "error_type"), [
    ({**PROMPT, "parameters": {"max_new_tokens": 0}}, 400, "invalid_request"),
    ({**PROMPT, "adapters": "nope", "stream": True}, 404, "unknown_adapter"),
])
def test_errors_reach_the_page_with_their_status_in_the_error_body(local_proxy: TestClient, body: dict[str, Any],
                                                                   status: int, error_type: str) -> None:
    response = local_proxy.post("/predict", json=body)
    assert response.status_code == status
    error = response.json()
    assert error["code"] == status and error["type"] == error_type and error["error"]["type"] == error_type
    assert error["message"]


def test_the_proxy_takes_only_json_objects(local_proxy: TestClient) -> None:
    assert local_proxy.post("/predict", content=b'{"inputs": "x"}',
                            headers={"Content-Type": "text/plain"}).json()["type"] == "unsupported_media_type"
    assert local_proxy.post("/predict", content=b"[1]", headers={"Content-Type": "application/json"}).status_code == 400
    assert local_proxy.post("/predict", content=b"{", headers={"Content-Type": "application/json"}).status_code == 400


def test_it_answers_only_its_own_host_and_page(local_proxy: TestClient) -> None:
    # DNS rebinding: a page at evil.example whose name now resolves to 127.0.0.1
    refused = local_proxy.get("/v1/models", headers={"Host": "evil.example"})
    assert refused.status_code == 403 and refused.json()["type"] == "forbidden"
    # a cross-site POST from a page elsewhere
    refused = local_proxy.post("/predict", json=PROMPT, headers={"Origin": "https://evil.example"})
    assert refused.status_code == 403
    # the page itself
    assert local_proxy.get("/playground", headers={"Origin": "http://testserver"}).status_code == 200


def test_the_proxy_serves_the_same_page(local_proxy: TestClient, server: Running) -> None:
    assert local_proxy.get("/playground").content == httpx.get(server.url + "/playground").content
    assert local_proxy.get("/", follow_redirects=False).headers["location"] == "/playground"
    info = local_proxy.get("/playground/target").json()
    assert info["kind"] == "local" and info["streaming"] is True and info["url"] == server.url
    assert info["endpoint_name"] == "lora-local"  # what its runtime API answers to, for the boto3 snippet


def test_an_unreachable_target_is_a_502() -> None:
    proxy = TestClient(create_proxy_app(HttpTarget("http://127.0.0.1:9", timeout_s=2), hosts=HOSTS))
    for response in (proxy.get("/v1/models"), proxy.post("/predict", json=PROMPT)):
        assert response.status_code == 502 and response.json()["type"] == "upstream_unreachable"
        assert response.json()["message"].startswith("could not reach http://127.0.0.1:9/")


# ---------------------------------------------------------------- a deployed endpoint through boto3

@pytest.fixture
def aws_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPLAYGROUND")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")


@pytest.fixture
def sagemaker(aws_keys: None) -> Iterator[tuple[TestClient, Any]]:
    from botocore.stub import Stubber

    target = RuntimeTarget("my-endpoint", region="eu-west-1")
    with Stubber(target.client) as stubber:
        yield TestClient(create_proxy_app(target, hosts=HOSTS)), stubber
        stubber.assert_no_pending_responses()


def _body(data: dict[str, Any]) -> Any:
    import io

    from botocore.response import StreamingBody

    raw = json.dumps(data).encode()
    return StreamingBody(io.BytesIO(raw), len(raw))


INFO = {"base_model": "my-base", "context_length": 4096, "adapters": [{"name": "support", "rank": 8}]}


def test_sagemaker_model_list_and_a_whole_answer(sagemaker: tuple[TestClient, Any]) -> None:
    proxy, stubber = sagemaker
    # GIVEN an endpoint that answers model info, then one generate request (the page asked for no stream)
    stubber.add_response("invoke_endpoint", {"Body": _body(INFO), "ContentType": "application/json"},
                         {"EndpointName": "my-endpoint", "Body": json.dumps({"task": "info"}).encode(),
                          "ContentType": "application/json", "Accept": "application/json"})
    answer = {"generated_text": " Hi.", "details": {"generated_tokens": 2, "prompt_tokens": 3}}
    sent = {"inputs": "Hello", "adapters": "support"}
    stubber.add_response("invoke_endpoint", {"Body": _body(answer), "ContentType": "application/json"},
                         {"EndpointName": "my-endpoint", "Body": json.dumps(sent).encode(),
                          "ContentType": "application/json", "Accept": "application/json"})
    # WHEN the page lists the models and sends its request
    models = proxy.get("/v1/models").json()
    reply = proxy.post("/predict", json=sent)
    # THEN the list is the info's, in the local endpoint's shape, and the answer is the endpoint's
    assert models == models_from_info(INFO, created=models["data"][0]["created"])
    assert [(m["id"], m["parent"]) for m in models["data"]] == [("my-base", None), ("support", "my-base")]
    assert reply.status_code == 200 and reply.json() == answer
    info = proxy.get("/playground/target").json()
    assert (info["kind"], info["endpoint_name"], info["region"], info["streaming"]) == (
        "sagemaker", "my-endpoint", "eu-west-1", True)


def test_the_page_is_told_the_aws_profile_and_component_for_its_code(aws_keys: None, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "config"
    config.write_text("[profile dev]\nregion = eu-west-1\naws_access_key_id = AKIDDEV\naws_secret_access_key = s\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    info = target_info(RuntimeTarget("my-endpoint", profile="dev", inference_component="my-endpoint-base"))
    assert (info["kind"], info["profile"], info["region"], info["inference_component"]) == (
        "sagemaker", "dev", "eu-west-1", "my-endpoint-base")
    # the local endpoint takes any credentials: no profile in its snippets
    assert target_info(RuntimeTarget("lora-local", endpoint_url="http://127.0.0.1:8080", profile="dev"))[
        "profile"] is None


def test_adapter_components_get_columns_and_each_call_names_its_component(aws_keys: None) -> None:
    from botocore.stub import Stubber

    from tests.sagemaker_stubs import BASE, ENDPOINT, described, listed

    # GIVEN an endpoint with inference components: the base (with the package's adapter `support`), an adapter
    # component `sql` on it, and one on another base
    target = RuntimeTarget(ENDPOINT, region="us-east-1", inference_component=BASE)
    proxy = TestClient(create_proxy_app(target, hosts=HOSTS))

    def invoke(body: dict[str, Any], component: str, answer: dict[str, Any]) -> None:
        runtime.add_response("invoke_endpoint", {"Body": _body(answer), "ContentType": "application/json"},
                             {"EndpointName": ENDPOINT, "Body": json.dumps(body).encode(), "InferenceComponentName":
                              component, "ContentType": "application/json", "Accept": "application/json"})

    with Stubber(target.client) as runtime, Stubber(target.control) as control:
        invoke({"task": "info"}, BASE, INFO)
        control.add_response("list_inference_components", listed(BASE, "other", "sql"),
                             {"EndpointNameEquals": ENDPOINT, "MaxResults": 100})
        for name, answer in ((BASE, described(BASE)), ("other", described("other", base="other-base")),
                             ("sql", described("sql", base=BASE))):
            control.add_response("describe_inference_component", answer, {"InferenceComponentName": name})
        # WHEN the page lists the models, then asks the component and the package's adapter
        models = proxy.get("/v1/models").json()["data"]
        invoke({"inputs": "Hello"}, "sql", {"generated_text": " SELECT 1"})
        by_component = proxy.post("/predict", json={"inputs": "Hello", "adapters": "sql"})
        invoke({"inputs": "Hello", "adapters": "support"}, BASE, {"generated_text": " Hi."})
        by_package = proxy.post("/predict", json={"inputs": "Hello", "adapters": "support"})
        runtime.assert_no_pending_responses()
        control.assert_no_pending_responses()
    # THEN the component has a column of its own, and each call went where that adapter lives
    assert [(m["id"], m["parent"], m.get("inference_component")) for m in models] == [
        ("my-base", None, None), ("support", "my-base", None), ("sql", "my-base", "sql")]
    assert by_component.json() == {"generated_text": " SELECT 1"} and by_package.json() == {"generated_text": " Hi."}


def test_without_the_right_to_list_components_the_packages_adapters_still_show(aws_keys: None) -> None:
    from botocore.stub import Stubber

    from tests.sagemaker_stubs import BASE, ENDPOINT

    target = RuntimeTarget(ENDPOINT, region="us-east-1", inference_component=BASE)
    proxy = TestClient(create_proxy_app(target, hosts=HOSTS))
    with Stubber(target.client) as runtime, Stubber(target.control) as control:
        runtime.add_response("invoke_endpoint", {"Body": _body(INFO), "ContentType": "application/json"})
        control.add_client_error("list_inference_components", "AccessDeniedException", "not authorized", 400)
        models = proxy.get("/v1/models")
    assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["my-base", "support"]


def test_sagemaker_errors_are_the_containers_status_and_body(sagemaker: tuple[TestClient, Any]) -> None:
    proxy, stubber = sagemaker
    # GIVEN the container refusing a streamed request (DJL async mode's body), then SageMaker itself refusing one
    djl = json.dumps({"code": 404, "error": "unknown_adapter: adapter 'x' is not served here; available: support"})
    stubber.add_client_error("invoke_endpoint_with_response_stream", service_error_code="ModelError",
                             service_message="Received client error (404)", http_status_code=424,
                             modeled_fields={"OriginalStatusCode": 404, "OriginalMessage": djl},
                             expected_params={"EndpointName": "my-endpoint", "ContentType": "application/json",
                                              "Body": json.dumps({"inputs": "Hi", "adapters": "x",
                                                                  "stream": True}).encode()})
    stubber.add_client_error("invoke_endpoint_with_response_stream", service_error_code="ValidationError",
                             service_message="Endpoint my-endpoint of account 1 not found.", http_status_code=400)
    # WHEN the page streams both
    first = proxy.post("/predict", json={"inputs": "Hi", "adapters": "x", "stream": True})
    second = proxy.post("/predict", json={"inputs": "Hi", "stream": True})
    # THEN the container's error comes with its own status, in the project's error body
    assert first.status_code == 404
    assert first.json()["type"] == "unknown_adapter" and first.json()["message"].startswith("adapter 'x'")
    # AND SageMaker's own error with its status and code
    assert second.status_code == 400
    assert second.json()["type"] == "validation_error" and "not found" in second.json()["message"]


# ---------------------------------------------------------------- API Gateway, signed with SigV4

def _verify_sigv4(request: httpx.Request, region: str) -> None:
    """Recompute the request's SigV4 signature from the headers it says it signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    match = re.fullmatch(r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=(\w+)",
                         request.headers["authorization"])
    assert match, request.headers["authorization"]
    credential, signed, signature = match.groups()
    assert re.fullmatch(rf"AKIDPLAYGROUND/\d{{8}}/{region}/execute-api/aws4_request", credential)
    assert {"host", "x-amz-date"} <= set(signed.split(";"))
    again = AWSRequest(method=request.method, url=str(request.url), data=request.content,
                       headers={name: request.headers[name] for name in signed.split(";")})
    again.context["timestamp"] = request.headers["x-amz-date"]
    auth = SigV4Auth(Credentials("AKIDPLAYGROUND", "secret"), "execute-api", region)
    assert auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again) == signature


def test_api_gateway_calls_are_signed_and_asked_for_whole_answers(aws_keys: None) -> None:
    # GIVEN a deployed API (its URL names the region) that records what reaches it
    seen: list[httpx.Request] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/prod/model/info":
            return httpx.Response(200, json=INFO)
        return httpx.Response(200, json={"generated_text": " Hi.", "details": {"generated_tokens": 2}})

    target = HttpTarget("https://abc123.execute-api.eu-west-1.amazonaws.com/prod", sigv4=True)
    target.http = httpx.Client(transport=httpx.MockTransport(api))
    proxy = TestClient(create_proxy_app(target, hosts=HOSTS))
    # WHEN the page lists the models and sends a streamed prompt
    models = proxy.get("/v1/models").json()
    reply = proxy.post("/predict", json={"inputs": "Hi", "adapters": "support", "stream": True,
                                         "parameters": {"max_new_tokens": 4}})
    # THEN both calls went to the stage's routes, signed for execute-api in the URL's region
    assert [r.url.path for r in seen] == ["/prod/model/info", "/prod/predict"]
    for request in seen:
        _verify_sigv4(request, "eu-west-1")
    # AND the prompt went without "stream" (the deployed API cannot stream), and came back whole
    assert json.loads(seen[1].content) == {"inputs": "Hi", "adapters": "support", "parameters": {"max_new_tokens": 4}}
    assert reply.status_code == 200 and reply.json()["generated_text"] == " Hi."
    assert [m["id"] for m in models["data"]] == ["my-base", "support"]
    info = target_info(target)
    assert (info["kind"], info["sigv4"], info["streaming"], info["region"]) == ("api", True, False, "eu-west-1")
    assert proxy.get("/playground/target").json() == info


# ---------------------------------------------------------------- the command puts it together

def test_the_command_serves_the_proxy_on_loopback_for_invokes_flags(server: Running,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from lora_endpoint.commands import playground

    from .conftest import free_port

    # GIVEN the command with the local endpoint as its target (--endpoint-url, as for invoke)
    started: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: started.append(self.config))
    port = free_port()
    # WHEN it runs (uvicorn stopped at the point where it would listen)
    assert playground.main(["--endpoint-url", server.url, "--port", str(port)]) == 0
    # THEN it listens on 127.0.0.1, and its app forwards a stream to the endpoint
    (config,) = started
    assert (config.host, config.port) == ("127.0.0.1", port)
    proxy = TestClient(config.app, base_url=f"http://127.0.0.1:{port}")
    with proxy.stream("POST", "/predict", json={**PROMPT, "adapters": "beta", "stream": True}) as response:
        response.read()
    assert response.status_code == 200 and "generated_text" in _lines(response)[-1]
    assert proxy.get("/playground/target").json()["target"] == f"endpoint lora-local at {server.url}"
    # AND it answers to no other host name
    assert proxy.get("/v1/models", headers={"Host": "evil.example"}).status_code == 403


@pytest.mark.parametrize(("content_type", "path"), [("application/jsonlines", "/predict"),
                                                    ("text/event-stream", "/v1/chat/completions")])
def test_a_stream_cut_midway_ends_with_an_error_record_in_its_own_format(content_type: str, path: str) -> None:
    # GIVEN an endpoint whose stream breaks after the first chunk
    first = b'{"token": {"id": 1, "text": " Hi", "log_prob": null}}\n' if path == "/predict" else \
        b'data: {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " Hi"}}]}\n\n'

    class Broken(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield first
            raise httpx.ReadError("connection reset")

    target = HttpTarget("http://127.0.0.1:8080")
    target.http = httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(200, headers={"content-type": content_type}, stream=Broken())))
    proxy = TestClient(create_proxy_app(target, hosts=HOSTS))
    # WHEN the page streams from it
    with proxy.stream("POST", path, json={"inputs": "x", "stream": True}) as response:
        response.read()
    # THEN what came is passed on, then one error record as the handler writes them (docs/handler.md#streaming)
    assert response.status_code == 200 and response.content.startswith(first)
    last = response.content[len(first):].decode()
    if path == "/predict":
        record = json.loads(last)
        assert record["details"] == {"finish_reason": "error"}
    else:
        events = [line.removeprefix("data: ") for line in last.splitlines() if line]
        assert events[-1] == "[DONE]"
        record = json.loads(events[0])
    assert record["code"] == 502 and record["type"] == "upstream_error" and "connection reset" in record["message"]
