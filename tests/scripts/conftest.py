"""A stand-in for vLLM's OpenAI completions route on a free loopback port, in a background thread."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class FakeCompletions(ThreadingHTTPServer):
    """``POST /v1/completions`` as vLLM answers it: ``usage.completion_tokens`` is ``max_tokens`` (one less for
    model ``short``, a 500 for model ``broken``); a stream sends one SSE chunk per token, ``step_s`` apart,
    and with ``serial`` one stream at a time (the way a server that runs a stream alone behaves)."""

    daemon_threads = True
    step_s = 0.005
    serial = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.bodies: list[dict[str, Any]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeCompletions

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        if body["model"] == "broken":
            self._send(500, {"error": {"message": "boom"}})
        elif body.get("stream"):
            self._stream(body["max_tokens"])
        else:
            n = body["max_tokens"] - (body["model"] == "short")
            self._send(200, {"choices": [{"text": "x" * n}], "usage": {"completion_tokens": n, "prompt_tokens": 3}})

    def _send(self, status: int, answer: dict[str, Any]) -> None:
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, tokens: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        with self.server.lock if self.server.serial else contextlib.nullcontext():
            for _ in range(tokens):
                time.sleep(self.server.step_s)
                self.wfile.write(b'data: {"choices": [{"text": "x"}]}\n\n')
                self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture
def fake_vllm() -> Iterator[FakeCompletions]:
    server = FakeCompletions()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
