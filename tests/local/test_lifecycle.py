"""Package loading as DJL does it, DJL batch Input/Output round trips, stream failures, disconnects, shutdown."""

from __future__ import annotations

import json
import tarfile
import threading
import time
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import EventStreamError

from lora_endpoint.local import djl_io
from lora_endpoint.local.app import create_app
from lora_endpoint.local.package import PackageError, ServedModel, resolve

from .conftest import fake_served, start, write_manifest

MODEL_PY = '''
import json, time
from djl_python import Output

STATE = {"init": None, "closed": 0}

def handle(inputs):
    if inputs.is_empty():
        STATE["init"] = dict(inputs.get_properties())
        return None
    items = inputs.get_batches() if inputs.is_batch() else [inputs]
    out = Output()
    for i, item in enumerate(items):
        body = item.get_as_json()
        if body.get("sleep"):
            time.sleep(body["sleep"])
        echo = {"props": {k: v for k, v in item.get_properties().items()}, "body": body}
        if inputs.is_batch():
            out.add_as_json(echo, key="data", batch_index=i)
        else:
            out.add_as_json(echo)
    return out
'''


def write_package(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text(MODEL_PY)
    (root / "serving.properties").write_text(
        "engine=Python\noption.entryPoint=model.py\noption.max_new_tokens=64\nbatch_size=3\nmax_batch_delay=40\n")
    return write_manifest(root)


def test_package_dir_and_tarball_resolve_with_serving_properties(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "pkg")
    spec = resolve(pkg)
    assert (spec.batch_size, spec.max_batch_delay_ms, spec.entry_file) == (3, 40, (pkg / "model.py").resolve())
    assert spec.init_properties == {"entryPoint": "model.py", "max_new_tokens": "64", "model_dir": str(pkg.resolve())}
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in pkg.iterdir():
            tar.add(path, arcname=path.name)
    from_tar = resolve(archive, work_dir=tmp_path)
    assert from_tar.temp_dir is not None and (from_tar.model_dir / "model.py").is_file()
    with pytest.raises(PackageError):
        resolve(tmp_path / "missing")


def test_model_py_is_loaded_by_path_and_gets_the_init_call(tmp_path: Path) -> None:
    served = ServedModel.from_spec(resolve(write_package(tmp_path / "pkg")))
    module = served.handle.__globals__
    assert module["__name__"].startswith("djl_entry_") and str(tmp_path) not in __import__("sys").path
    served.load()
    assert module["STATE"]["init"]["max_new_tokens"] == "64" and module["STATE"]["init"]["model_dir"]


def test_batch_input_round_trip_and_per_item_properties(tmp_path: Path) -> None:
    served = ServedModel.from_spec(resolve(write_package(tmp_path / "pkg")))
    calls = [djl_io.Call.from_http({"Content-Type": "application/json",
                                    "X-Amzn-SageMaker-Custom-Attributes": f"n={i}; x = y"},
                                   json.dumps({"i": i}).encode(), model_dir="/m") for i in range(3)]
    batch = djl_io.build_input(served.djl, calls)
    assert batch.is_batch() and batch.get_property("batch_size") == "3"
    answers = djl_io.split_output(served.handle(batch), 3)
    for i, answer in enumerate(answers):
        echo = answer.json()
        assert echo["body"] == {"i": i}
        assert echo["props"]["n"] == str(i) and echo["props"]["x"] == "y" and echo["props"]["model_dir"] == "/m"


def test_batch_item_error_body_gets_its_own_status() -> None:
    djl = djl_io.ensure_djl_python()
    out = djl.Output()
    out.add(b'{"ok": 1}', key="data", batch_index=0)
    out.add(json.dumps({"code": 404, "type": "unknown_adapter", "message": "m", "error": {}}), key="data",
            batch_index=1)
    assert [a.status for a in djl_io.split_output(out, 2)] == [200, 404]
    assert [a.status for a in djl_io.split_output(out.set_code(400), 2)] == [400, 400]


class SlowStream:
    """A handler whose stream yields slowly and records when it is closed; it can fail mid-stream."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def handle(self, inputs):  # type: ignore[no-untyped-def]
        from djl_python import Output

        if inputs.is_empty():
            return None
        body = inputs.get_as_json()
        out = Output()
        out.add_property("Content-Type", "application/jsonlines")
        out.add_stream_content(self.chunks(body.get("fail_after")), output_formatter=lambda c: c)
        return out

    def chunks(self, fail_after):  # type: ignore[no-untyped-def]
        try:
            for i in range(2000):
                if fail_after is not None and i == fail_after:
                    raise RuntimeError("the GPU caught fire")
                yield f'{{"i": {i}}}\n'.encode()
                time.sleep(0.01)
        finally:
            self.closed.set()


@pytest.fixture
def slow() -> object:
    handler = SlowStream()
    running = start(create_app(fake_served(handler.handle), batch_size=2, max_batch_delay_ms=10))
    yield handler, running
    running.stop()


def test_stream_failure_after_the_first_byte_is_a_model_stream_error(slow) -> None:
    _, running = slow
    client = boto3.client("sagemaker-runtime", endpoint_url=running.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="x")
    response = client.invoke_endpoint_with_response_stream(
        EndpointName="lora-local", Body=json.dumps({"stream": True, "fail_after": 2}))
    events = iter(response["Body"])
    assert [next(events)["PayloadPart"]["Bytes"] for _ in range(2)] == [b'{"i": 0}\n', b'{"i": 1}\n']
    with pytest.raises(EventStreamError) as caught:
        next(events)
    assert caught.value.response["Error"]["Code"] == "ModelStreamError"
    assert "fire" not in caught.value.response["Error"]["Message"]  # internals stay in the log


def test_client_disconnect_closes_the_generator(slow) -> None:
    handler, running = slow
    with httpx.stream("POST", running.url + "/invocations", json={"stream": True}, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines) == '{"i": 0}'
    # the client went away after one line of 2000 (20 s of stream): generation must stop
    assert handler.closed.wait(10)


def test_ping_is_503_until_loaded_and_shutdown_drains_in_flight_requests(tmp_path: Path) -> None:
    gate = threading.Event()
    served = ServedModel.from_spec(resolve(write_package(tmp_path / "pkg")))
    inner = served.handle

    def gated(inputs):  # type: ignore[no-untyped-def]
        if inputs.is_empty():
            gate.wait(10)
        return inner(inputs)

    served.handle = gated
    running = start(create_app(served, batch_size=2, max_batch_delay_ms=10), wait_ready=False)
    try:
        assert httpx.get(running.url + "/ping").status_code == 503
        assert httpx.get(running.url + "/health").json()["status"] == "Creating"
        gate.set()
        assert served.ready.wait(10) and httpx.get(running.url + "/ping").status_code == 200
        # GIVEN a request in flight
        result: dict[str, int] = {}
        thread = threading.Thread(target=lambda: result.update(
            status=httpx.post(running.url + "/invocations", json={"sleep": 1.0}, timeout=30).status_code))
        thread.start()
        time.sleep(0.3)
    finally:
        # WHEN the server is told to stop
        running.stop()
    thread.join(10)
    # THEN the request was still answered
    assert result == {"status": 200}
