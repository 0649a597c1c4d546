"""The local endpoint in DJL's async mode over HTTP: every request one ``await handle()`` on the server's
loop, streams as they come, disconnects that close the generator (and drop the engine's rows), error
records through every route, the init call, the drain, and the packages lora-package builds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError, EventStreamError

from lora_endpoint.local.app import create_app

from .conftest import Running, fake_served, start
from .test_async_frontend import JSON_LINES, out


class Handler:
    """An async handle as the contract has it. Custom attributes steer it: ``code=N`` answers an error
    record, ``wait=1`` waits for ``gate``; ``"stream": true`` streams ``n`` JSON lines (after the first,
    it waits for ``gate`` when ``gated``), failing at line ``fail_after``."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.closed = threading.Event()
        self.inits: list[dict[str, str]] = []
        self.threads: set[str] = set()

    async def handle(self, inputs: Any) -> Any:
        self.threads.add(threading.current_thread().name)
        if inputs.is_empty():
            self.inits.append(dict(inputs.get_properties()))
            return None
        if inputs.get_property("code"):
            return out("", True, code=int(inputs.get_property("code")), error="unknown_adapter: adapter 'x' is "
                       "not served here", header_Content_Type="application/json", header_Retry_After="7")
        if inputs.get_property("wait"):
            await asyncio.to_thread(self.gate.wait, 30)
        body = inputs.get_as_json()
        if body.get("stream"):
            return self.lines(body)
        return out(json.dumps({"ok": True, "inputs": body.get("inputs")}), header_Content_Type="application/json")

    async def lines(self, body: dict[str, Any]) -> AsyncIterator[Any]:
        try:
            for i in range(body.get("n", 3000)):
                if i == body.get("fail_after"):
                    raise RuntimeError("the GPU caught fire")
                yield out(f'{{"i": {i}}}\n', False, **({"header_Content_Type": JSON_LINES} if i == 0 else {}))
                if i == 0 and body.get("gated"):
                    await asyncio.to_thread(self.gate.wait, 30)
                await asyncio.sleep(0.01)
            yield out("", True)
        finally:
            self.closed.set()


@pytest.fixture
def fake() -> Iterator[tuple[Handler, Running]]:
    handler = Handler()
    served = fake_served(handler.handle)
    served.init_properties = {"max_new_tokens": "64", "model_dir": "/nonexistent"}
    running = start(create_app(served, drain_timeout_s=1.0))
    try:
        yield handler, running
    finally:
        handler.gate.set()
        running.stop()


def _runtime(running: Running) -> Any:
    return boto3.client("sagemaker-runtime", endpoint_url=running.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def test_each_request_is_awaited_on_the_server_s_loop_and_a_waiting_one_blocks_no_other(fake) -> None:
    handler, running = fake
    assert handler.inits == [{"max_new_tokens": "64", "model_dir": "/nonexistent"}]
    # GIVEN a request whose handle() waits
    waiting: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: waiting.update(response=httpx.post(
        running.url + "/invocations", json={"inputs": "a"}, headers={"X-Amzn-SageMaker-Custom-Attributes": "wait=1"},
        timeout=30)))
    thread.start()
    # WHEN another arrives, THEN it is answered while the first still waits
    assert httpx.post(running.url + "/invocations", json={"inputs": "b"}, timeout=10).json()["inputs"] == "b"
    assert "response" not in waiting
    handler.gate.set()
    thread.join(10)
    assert waiting["response"].json() == {"ok": True, "inputs": "a"}
    assert handler.threads == {running.thread.name}  # the server's own event loop: no worker thread
    assert httpx.get(running.url + "/local/stats").json() == {"mode": "async", "engine": None}


def test_stream_chunks_go_out_as_the_generator_yields_them(fake) -> None:
    handler, running = fake
    with httpx.stream("POST", running.url + "/invocations", json={"stream": True, "gated": True, "n": 3},
                      timeout=30) as response:
        assert response.headers["content-type"].startswith(JSON_LINES)
        lines = response.iter_lines()
        # the generator is parked after its first chunk: that chunk is out already
        assert next(lines) == '{"i": 0}' and not handler.closed.is_set()
        handler.gate.set()
        assert [json.loads(line)["i"] for line in lines if line] == [1, 2]


@pytest.mark.parametrize("path", ["/invocations", "/predict", "/endpoints/lora-local/invocations-response-stream"])
def test_a_client_that_disconnects_closes_the_async_generator(fake, path) -> None:
    handler, running = fake
    with httpx.stream("POST", running.url + path, json={"inputs": "x", "stream": True}, timeout=30) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    # one line of 3000 (30 s of stream) was read: the generator must be closed now
    assert handler.closed.wait(10)


def test_the_runtime_stream_route_frames_async_chunks_and_a_mid_stream_failure(fake) -> None:
    _, running = fake
    response = _runtime(running).invoke_endpoint_with_response_stream(
        EndpointName="lora-local", Body=json.dumps({"stream": True, "fail_after": 2}))
    assert response["ContentType"] == JSON_LINES
    events = iter(response["Body"])
    assert [next(events)["PayloadPart"]["Bytes"] for _ in range(2)] == [b'{"i": 0}\n', b'{"i": 1}\n']
    with pytest.raises(EventStreamError) as caught:
        next(events)
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"
    assert "fire" not in caught.value.response["Error"]["Message"]


@pytest.mark.parametrize(("code", "gateway"), [(404, 404), (429, 429), (507, 503), (424, 500)])
def test_async_error_records_reach_every_route_as_the_deployed_stack_maps_them(fake, code, gateway) -> None:
    _, running = fake
    headers = {"X-Amzn-SageMaker-Custom-Attributes": f"code={code}"}
    expected = {"code": code, "error": "unknown_adapter: adapter 'x' is not served here"}
    container = httpx.post(running.url + "/invocations", json={"inputs": "x"}, headers=headers)
    assert (container.status_code, container.json()) == (code, expected)
    assert container.headers["retry-after"] == "7"
    # the API Gateway routes: the status as the stack maps it, the body in the project's error shape
    # (the stack's model_error template rewrites DJL's {"code", "error": "type: message"} the same way)
    route = httpx.post(running.url + "/predict", json={"inputs": "x"}, headers=headers)
    message = "adapter 'x' is not served here"
    assert (route.status_code, route.json()) == (gateway, {
        "code": gateway, "type": "unknown_adapter", "message": message,
        "error": {"type": "unknown_adapter", "message": message}})
    # the runtime API: a ModelError with the container's status and body
    with pytest.raises(ClientError) as caught:
        _runtime(running).invoke_endpoint(EndpointName="lora-local", Body=b'{"inputs": "x"}',
                                          ContentType="application/json", CustomAttributes=f"code={code}")
    error = caught.value.response
    assert (error["Error"]["Code"], error["OriginalStatusCode"]) == ("ModelError", code)
    assert json.loads(error["OriginalMessage"]) == expected


def test_a_failing_async_init_keeps_ping_503_and_reports_the_failure() -> None:
    async def broken(inputs: Any) -> Any:
        if inputs.is_empty():
            raise RuntimeError("no weights")
        return out("{}")

    failures: list[BaseException] = []
    running = start(create_app(fake_served(broken), on_load_failure=failures.append), wait_ready=False)
    try:
        deadline = time.monotonic() + 10
        while not failures and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [str(f) for f in failures] == ["no weights"]
        assert httpx.get(running.url + "/ping").json() == {"status": "Unhealthy"}
        assert httpx.get(running.url + "/health").json()["status"] == "Failed"
        assert httpx.post(running.url + "/invocations", json={}).status_code == 503
    finally:
        running.stop()


def test_shutdown_answers_requests_in_flight(fake) -> None:
    handler, running = fake
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(response=httpx.post(
        running.url + "/invocations", json={"inputs": "a"}, headers={"X-Amzn-SageMaker-Custom-Attributes": "wait=1"},
        timeout=30)))
    thread.start()
    time.sleep(0.2)
    # WHEN the server is told to stop while the request waits
    stopper = threading.Thread(target=running.stop)
    stopper.start()
    deadline = time.monotonic() + 10
    while not running.state.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.state.draining
    handler.gate.set()  # the request finishes during the drain
    thread.join(10)
    stopper.join(30)
    # THEN it was still answered
    assert result["response"].json() == {"ok": True, "inputs": "a"}


def test_a_disconnect_from_a_real_stream_makes_the_engine_drop_its_rows(server) -> None:
    from lora_endpoint.handler import entry

    # GIVEN the engine running (one request), slowed by 20 ms a forward pass
    assert httpx.post(server.url + "/invocations", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
                      timeout=60).status_code == 200
    engine = entry._runtime.model.engine
    forward = engine._forward

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)
        return forward(*args, **kwargs)

    engine._forward = slow
    try:
        before = engine.stats.decode_steps
        body = {"inputs": "Hello", "stream": True,
                "parameters": {"max_new_tokens": 200, "ignore_eos": True, "do_sample": False}}
        # WHEN a client reads one token of 200 and goes away
        with httpx.stream("POST", server.url + "/invocations", json=body, timeout=60) as response:
            next(response.iter_lines())
        # (the row is in the engine's lists from its prefill until it leaves; the stats lag an iteration)
        deadline = time.monotonic() + 30
        while (engine._decoding or engine._prefilling) and time.monotonic() < deadline:
            time.sleep(0.02)
        # THEN its row left the engine long before its 200 tokens (8 s at this speed)
        assert not engine._decoding and not engine._prefilling
        assert engine.stats.decode_steps - before < 100
    finally:
        del engine._forward


def test_lora_package_builds_run_in_their_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    from lora_endpoint.handler import entry
    from lora_endpoint.local.package import ServedModel, resolve
    from lora_endpoint.packaging import BuildOptions, build

    adapters = (("alpha", tiny_model_dir / "adapters" / "alpha"),)
    for mode, handle in (("async", entry.handle), ("sync", entry.handle_sync)):
        built = build(BuildOptions(base_model=str(tiny_model_dir / "base"), output=tmp_path / mode, format="dir",
                                   adapters=adapters, djl_mode=mode, progress=False))
        spec = resolve(built.path)
        served = ServedModel.from_spec(spec)
        assert (served.mode, served.handle, spec.batch_size) == (mode, handle, 1)
    # the async package, served: the generate answer comes from the engine
    saved, entry._runtime = entry._runtime, entry._Runtime()
    running = start(create_app(ServedModel.from_spec(resolve(tmp_path / "async"))))
    try:
        response = httpx.post(running.url + "/invocations", timeout=60,
                              json={"inputs": "Hello", "adapters": "alpha", "parameters": {"max_new_tokens": 3}})
        assert response.status_code == 200 and response.json()["details"]["generated_tokens"] == 3
        stats = httpx.get(running.url + "/local/stats").json()
        assert stats["mode"] == "async" and stats["engine"]["admitted"] >= 1
    finally:
        running.stop()
        entry._runtime = saved
