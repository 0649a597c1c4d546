"""The container contract and the API Gateway routes over plain HTTP (in both DJL modes), and batching
under concurrency."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from .conftest import error_type as type_of

GREEDY = {"max_new_tokens": 10, "do_sample": False}
CHAT = {"messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 8, "temperature": 0}


def post(server, path, body):  # type: ignore[no-untyped-def]
    return httpx.post(server.url + path, json=body, timeout=60)


def test_ping_health_and_info(server) -> None:
    assert httpx.get(server.url + "/ping").status_code == 200
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "InService"
    info = httpx.get(server.url + "/model/info", timeout=60)
    assert info.status_code == 200
    assert sorted(a["name"] for a in info.json()["adapters"]) == ["alpha", "beta"]


def test_openapi_documents_each_route_body(server) -> None:
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path, required in (("/predict", ["inputs"]), ("/rag", ["query", "context"]),
                           ("/v1/chat/completions", ["messages"])):
        schema = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert schema["required"] == required
    assert {"/health", "/model/info", "/ping", "/invocations", "/endpoints/{name}/invocations",
            "/endpoints/{name}/invocations-response-stream"} <= set(paths)


@pytest.mark.parametrize(("path", "body", "status", "error_type"), [
    ("/predict", {"inputs": "Hello", "parameters": GREEDY}, 200, None),
    ("/predict", {"prompt": "Hello"}, 400, "invalid_request"),  # the deployed model requires inputs
    ("/predict", {"inputs": "Hello", "parameters": {"max_new_tokens": 0}}, 400, "invalid_request"),
    ("/predict", {"inputs": "Hello", "adapters": "nope"}, 404, "unknown_adapter"),
    ("/rag", {"context": ["The sky is blue."]}, 400, "invalid_request"),
    ("/rag", {"query": "Sky?", "context": ["The sky is blue."], "parameters": GREEDY}, 200, None),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_request"),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, 400, "invalid_request"),
    ("/v1/chat/completions", CHAT, 200, None),
])
def test_routes_validate_then_answer_through_the_handler(server, path, body, status, error_type) -> None:
    response = post(server, path, body)
    assert response.status_code == status, response.text
    data = response.json()
    if error_type:
        assert type_of(data) == error_type and data["code"] == status
    elif path == "/rag":
        assert data["sources"] == [0]
    elif path == "/v1/chat/completions":
        assert data["object"] == "chat.completion" and data["choices"][0]["message"]["role"] == "assistant"


def test_route_rejects_a_body_that_is_not_json(server) -> None:
    response = httpx.post(server.url + "/predict", content=b"{nope", headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["type"] == "invalid_request"


def test_streaming_chat_is_sse_ending_with_done(server) -> None:
    whole = post(server, "/v1/chat/completions", CHAT).json()["choices"][0]["message"]["content"]
    with httpx.stream("POST", server.url + "/v1/chat/completions", json={**CHAT, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == whole


def test_container_invocations_streams_json_lines(server) -> None:
    body = {"inputs": "Hello", "parameters": GREEDY}
    whole = httpx.post(server.url + "/invocations", json=body, timeout=60).json()
    with httpx.stream("POST", server.url + "/invocations", json={**body, "stream": True}, timeout=60) as r:
        assert r.headers["content-type"].startswith("application/jsonlines")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["generated_text"] == whole["generated_text"]


def test_concurrent_requests_are_batched_and_each_equals_its_solo_answer(server) -> None:
    bodies = [{"inputs": prompt, "adapters": adapter, "parameters": {**GREEDY, "max_new_tokens": n}}
              for prompt, adapter, n in [("Hello", None, 6), ("A longer prompt here", "alpha", 12),
                                         ("Hi", "beta", 9), ("Once upon a time", "alpha", 4),
                                         ("Hello", "beta", 10), ("Zebra", None, 7)]]
    # GIVEN each request's answer alone
    solo = [post(server, "/predict", body).json() for body in bodies]
    before = _stats(server)
    # WHEN they arrive together
    with ThreadPoolExecutor(len(bodies)) as pool:
        together = list(pool.map(lambda b: post(server, "/predict", b).json(), bodies))
    # THEN the engine ran decode steps over rows of several requests, and every answer is the one it
    # gets alone (sync mode: the batcher also formed a DJL batch of several)
    after = _stats(server)
    assert after["mode"] == server.mode
    steps = Counter({int(k): v for k, v in after["engine"]["batch_sizes"].items()})
    steps.subtract({int(k): v for k, v in before["engine"]["batch_sizes"].items()})
    assert any(size > 1 and count > 0 for size, count in steps.items()), steps
    if server.mode == "sync":
        formed = Counter(after["batcher"]["sizes"])
        formed.subtract(before["batcher"]["sizes"])
        assert any(int(size) > 1 and count > 0 for size, count in formed.items()), formed
    else:
        assert "batcher" not in after
    assert together == solo


def _stats(server):  # type: ignore[no-untyped-def]
    return httpx.get(server.url + "/local/stats").json()


def test_local_route_schemas_are_the_deployed_models_with_streaming_allowed() -> None:
    from cdk.components.api_mapping import REQUEST_SCHEMAS
    from lora_endpoint.local.api_routes import local_schema

    for name in ("Generate", "Rag", "ChatCompletion"):
        local, deployed = dict(local_schema(name)["properties"]), dict(REQUEST_SCHEMAS[name]["properties"])
        assert local.pop("stream") == {"anyOf": [{"type": "boolean"}, {"type": "null"}]}
        assert deployed.pop("stream") == {"anyOf": [{"enum": [False]}, {"type": "null"}]}
        assert local == deployed
