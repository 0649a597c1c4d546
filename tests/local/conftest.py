"""A local endpoint on a free port, in a background thread, over the tiny model dir (stopped at the end).

The session ``server`` runs once per DJL mode: ``async`` (what packages use: every request its own
``await handle()``) and ``sync`` (the in-process batcher and ``handle_sync``); tests that use it run in
both, and ``server.mode`` says which.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from lora_endpoint.local.app import DrainingServer, create_app
from lora_endpoint.local.package import ServedModel, resolve

BATCH_SIZE = 8
BATCH_DELAY_MS = 150  # wide enough that concurrent test requests share a batch on a slow CI machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Running:
    url: str
    port: int
    app: Any
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def state(self) -> Any:
        return self.app.state.endpoint

    @property
    def mode(self) -> str:
        return str(self.state.served.mode)

    def stop(self, timeout_s: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), "server did not stop"


def start(app: Any, *, wait_ready: bool = True, timeout_s: float = 60.0) -> Running:
    """``app`` served on a free port in a thread: the local endpoint's (waiting for ``/ping`` unless
    ``wait_ready`` is false), or any other app (e.g. the playground proxy, with ``wait_ready=False``)."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=10)
    endpoint = getattr(app.state, "endpoint", None)
    server = DrainingServer(config, endpoint=endpoint) if endpoint is not None else uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    running = Running(f"http://127.0.0.1:{port}", port, app, server, thread)
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            running.stop()
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    while wait_ready and httpx.get(running.url + "/ping").status_code != 200:
        if time.monotonic() > deadline:
            running.stop()
            raise RuntimeError("model did not load")
        time.sleep(0.05)
    return running


def spec_in_mode(model_dir: Path, mode: str) -> Any:
    """The plain model dir's spec (async), or the same served by ``handle_sync`` and the batcher."""
    spec = resolve(model_dir)
    if mode == "sync":
        spec = dataclasses.replace(spec, async_mode=False, batch_size=BATCH_SIZE, max_batch_delay_ms=BATCH_DELAY_MS)
    return spec


@pytest.fixture(scope="session", params=["async", "sync"])
def server(request: pytest.FixtureRequest, tiny_model_dir: Path) -> Iterator[Running]:
    """The repository's handler serving the tiny model dir in one DJL mode, with a fresh handler runtime."""
    from lora_endpoint.handler import entry

    saved = entry._runtime
    entry._runtime = entry._Runtime()
    spec = spec_in_mode(tiny_model_dir, request.param)
    running = start(create_app(ServedModel.from_spec(spec), batch_size=spec.batch_size,
                               max_batch_delay_ms=spec.max_batch_delay_ms))
    try:
        yield running
    finally:
        running.stop()
        entry._runtime = saved


@pytest.fixture(scope="session")
def runtime(server: Running) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("sagemaker-runtime", endpoint_url=server.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x",
                        config=Config(retries={"max_attempts": 1}, read_timeout=60))


def write_manifest(root: Path) -> Path:
    """A ``manifest.json`` for the files under ``root``, as ``lora-package build`` writes it."""
    from lora_endpoint.contract.manifest import Entry, build_manifest, digest_entries

    files = [Entry(p.relative_to(root).as_posix(), source=p) for p in sorted(root.rglob("*")) if p.is_file()]
    manifest = build_manifest(package_version="test", base_model={}, serving={}, adapters=[],
                              digests=digest_entries(files, workers=1))
    (root / "manifest.json").write_bytes(manifest)
    return root


def fake_served(handle: Callable[[Any], Any]) -> ServedModel:
    """A ServedModel around any ``handle`` (for servers that misbehave on purpose); an ``async def``
    handle is served in async mode."""
    import inspect

    return ServedModel("/nonexistent", handle, {}, async_mode=inspect.iscoroutinefunction(handle))


def error_type(body: dict[str, Any]) -> str:
    """The machine-readable type of an error body: the project's ``{"type": ...}``, or in async mode
    DJL's ``{"code", "error": "<type>: <message>"}``."""
    if "type" in body:
        return str(body["type"])
    assert set(body) == {"code", "error"} and isinstance(body["error"], str), body
    return body["error"].split(":", 1)[0]
