"""The local endpoint under hostile and sloppy clients: bounded bodies, JSON errors everywhere, the
same contract on every route, streams that end cleanly, and a drain that answers everyone."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from lora_endpoint.local import djl_io
from lora_endpoint.local.app import create_app
from tests.docs import doc

from .conftest import fake_served, start

ROOT = Path(__file__).resolve().parents[2]
README = doc("handler")
EXAMPLES = {name: json.loads(req) for name, req in
            re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", README, re.S)}


def raw_http(port: int, request: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send raw bytes and read what comes back until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    return data


def status_and_body(response: bytes) -> tuple[int, dict]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


@pytest.mark.parametrize("path", ["/invocations", "/predict", "/endpoints/lora-local/invocations"])
@pytest.mark.parametrize(
    "raw",
    ["[" * 50_000 + "]" * 50_000, '{"inputs": "a\\ud800"}',
     '{"inputs": "Hi", "parameters": {"seed": ' + "9" * 5000 + "}}",
     '{"inputs": "Hi", "parameters": {"temperature": NaN}}', "not json"],
)
def test_bad_bodies_are_json_4xx_on_every_route_and_keep_the_connection(server, path, raw) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        response = client.post(path, content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= response.status_code < 500 or response.status_code == 424  # runtime: ModelError
        body = response.json()
        status = body.get("OriginalStatusCode", response.status_code)
        assert status == 400
        # the same keep-alive connection still serves
        assert client.get("/ping").status_code == 200


def test_a_declared_huge_body_is_refused_before_it_is_read(server) -> None:
    started = time.monotonic()
    reply = raw_http(server.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 104857600\r\n\r\n{\"inputs\": ")
    status, body = status_and_body(reply)
    assert status == 413 and body["type"] == "payload_too_large"
    assert time.monotonic() - started < 5


def test_a_chunked_body_over_the_cap_is_refused(tiny_model_dir) -> None:
    from lora_endpoint.handler import entry

    saved, entry._runtime = entry._runtime, entry._Runtime()
    from lora_endpoint.local.package import ServedModel, resolve

    running = start(create_app(ServedModel.from_spec(resolve(tiny_model_dir)), batch_size=1, max_batch_delay_ms=0,
                               max_body_bytes=1000, body_timeout_s=0.5))
    try:
        def chunks():  # type: ignore[no-untyped-def]
            yield b'{"inputs": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}'

        response = httpx.post(running.url + "/invocations", content=chunks(), timeout=30,
                              headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and response.json()["type"] == "payload_too_large"
        # WHEN a client sends its headers and then never its body
        started = time.monotonic()
        reply = raw_http(running.port, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{")
        # THEN it gets a JSON 408 at the deadline and its connection is closed
        status, body = status_and_body(reply)
        assert status == 408 and body["type"] == "request_timeout"
        assert time.monotonic() - started < 5
    finally:
        running.stop()
        entry._runtime = saved


def test_routing_errors_are_json(server) -> None:
    for response in (httpx.get(server.url + "/nope"), httpx.get(server.url + "/invocations")):
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["code"] == response.status_code in (404, 405)


def test_predict_honours_content_type_accept_and_the_adapter_header(server) -> None:
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 5, "do_sample": False}}
    assert httpx.post(server.url + "/predict", content=json.dumps(body),
                      headers={"Content-Type": ";;;==="}).status_code == 415
    assert httpx.post(server.url + "/predict", json=body, headers={"Accept": "text/html"}).status_code == 406
    by_header = httpx.post(server.url + "/predict", json=body,
                           headers={"X-Amzn-SageMaker-Adapter-Identifier": "alpha"}).json()
    assert by_header == httpx.post(server.url + "/predict", json={**body, "adapters": "alpha"}).json()
    assert by_header != httpx.post(server.url + "/predict", json=body).json()


ROUTES = {"generate": "/predict", "generate_list": "/predict", "rag": "/rag", "chat": "/v1/chat/completions"}


@pytest.mark.parametrize("name", sorted(ROUTES))
def test_readme_examples_pass_every_route_that_takes_them(server, runtime, name) -> None:
    body = json.loads(json.dumps(EXAMPLES[name]).replace('"support-bot"', '"alpha"'))
    assert httpx.post(server.url + ROUTES[name], json=body, timeout=60).status_code == 200
    assert httpx.post(server.url + "/invocations", json=body, timeout=60).status_code == 200
    answer = runtime.invoke_endpoint(EndpointName="lora-local", ContentType="application/json", Body=json.dumps(body))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_adapters_null_and_list_with_null_pass_predict(server) -> None:
    for adapters in (None, [None, "alpha"]):
        inputs = "Hi" if adapters is None else ["Hi", "Hi"]
        response = httpx.post(server.url + "/predict", json={"inputs": inputs, "adapters": adapters,
                                                             "parameters": {"max_new_tokens": 2}})
        assert response.status_code == 200, response.text


def test_batch_inputs_use_djl_s_three_digit_keys_and_parse_as_the_real_input_does() -> None:
    djl = djl_io.ensure_djl_python()
    calls = [djl_io.Call({"Content-Type": "application/json", "requestId": str(i)}, b'{"i": %d}' % i)
             for i in range(12)]
    batch = djl_io.build_input(djl, calls)
    assert "batch_011.data" in [k for k, _ in batch.content] and "batch_000.requestId" in batch.properties
    # The frontend's format (djl-serving's PyPredictor: "batch_%03d." + key), checked apart from the stand-in
    keys = [k for k, _ in batch.content] + [k for k in batch.properties if k.startswith("batch_") and k != "batch_size"]
    assert keys and all(re.fullmatch(r"batch_\d{3}\.[A-Za-z][\w-]*", k) for k in keys), keys
    # djl_python's Input.get_batches reads the index from characters 6-8 and the key from character 10
    items = batch.get_batches()
    assert [item.get_as_json()["i"] for item in items] == list(range(12))
    assert items[11].get_property("requestId") == "11"


def test_a_batch_output_that_does_not_match_the_batch_fails_every_item_as_djl_does() -> None:
    djl = djl_io.ensure_djl_python()
    out = djl.Output()
    out.add(b"{}", key="data", batch_index=0)  # one entry for two requests
    assert [a.status for a in djl_io.split_output(out, 2)] == [424, 424]


class Streams:
    """A handler that streams JSON lines slowly, can fail mid-stream, and blocks non-streams on a gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()

    def handle(self, inputs):  # type: ignore[no-untyped-def]
        from djl_python import Output

        if inputs.is_empty():
            return None
        items = inputs.get_batches() if inputs.is_batch() else [inputs]
        body = items[0].get_as_json()
        out = Output()
        if body.get("stream"):
            out.add_property("Content-Type", "application/jsonlines")
            out.add_stream_content(self.lines(body.get("fail_after")), output_formatter=lambda c: c)
            return out
        self.gate.wait(30)
        for i, _ in enumerate(items):
            out.add(b'{"ok": true}', key="data", batch_index=i if inputs.is_batch() else None)
        return out

    def lines(self, fail_after):  # type: ignore[no-untyped-def]
        for i in range(3000):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("boom")
            yield f'{{"i": {i}}}\n'.encode()
            time.sleep(0.01)


def test_a_stream_that_fails_after_its_first_byte_ends_with_an_error_line() -> None:
    running = start(create_app(fake_served(Streams().handle), batch_size=1, max_batch_delay_ms=0))
    try:
        response = httpx.post(running.url + "/invocations", json={"stream": True, "fail_after": 3}, timeout=30)
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert response.status_code == 200 and [line.get("i") for line in lines[:3]] == [0, 1, 2]
        assert lines[-1]["error"]["type"] == "internal_error" and lines[-1]["details"]["finish_reason"] == "error"
        assert "boom" not in response.text
    finally:
        running.stop()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_past_the_drain_time_waiting_requests_get_json_503_and_streams_an_error_record(mode: str) -> None:
    from .test_async_mode import Handler

    handler = Streams() if mode == "sync" else Handler()  # in both, a waiting request waits for the gate
    running = start(create_app(fake_served(handler.handle), drain_timeout_s=1.0))
    assert running.mode == mode
    results: dict[str, httpx.Response] = {}

    def post(key: str, body: dict) -> None:
        results[key] = httpx.post(running.url + "/invocations", json=body, timeout=30,
                                  headers={"X-Amzn-SageMaker-Custom-Attributes": "wait=1"})

    threads = [threading.Thread(target=post, args=("stream", {"stream": True})),
               threading.Thread(target=post, args=("waiting", {"inputs": "x"}))]
    try:
        threads[0].start()
        time.sleep(0.3)
        threads[1].start()
        time.sleep(0.3)
    finally:
        running.stop()  # drain 1 s: the gate never opens, the stream would run 30 s
        handler.gate.set()
    for thread in threads:
        thread.join(30)
    waiting = results["waiting"]
    assert waiting.status_code == 503 and waiting.json()["type"] == "service_unavailable"
    assert waiting.headers["retry-after"]
    last = json.loads(results["stream"].text.splitlines()[-1])
    assert last["error"]["type"] == "service_unavailable"


def test_sigterm_after_a_clean_drain_exits_0(tmp_path: Path) -> None:
    from .conftest import free_port

    package = tmp_path / "pkg"
    package.mkdir()
    (package / "model.py").write_text("def handle(inputs):\n    return None\n")
    (package / "serving.properties").write_text("engine=Python\noption.entryPoint=model.py\n")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "lora_endpoint", "serve", str(package),
                                "--port", str(port), "--drain-timeout", "2", "--log-level", "warning",
                                "--allow-no-manifest"],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ping").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0, process.stderr.read() if process.stderr else ""
    finally:
        process.kill()
