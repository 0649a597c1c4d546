"""Seeded, bounded fuzz of the handler and the local endpoint's routes: no client input may reach a 5xx.

Bodies start from every request shape the API speaks (and the bodies real clients send), then get up
to four mutations each: a leaf replaced by a nasty value (lone surrogates, 5000-digit numbers, 5e-324,
NaN, huge strings, wrong types, deep nesting), keys added (typos, the TGI/vLLM vocabulary, surrogate
names), keys removed, or the raw bytes broken (invalid UTF-8, truncation, garbage). Headers vary too:
Content-Type, Accept and the adapter header. Each case is checked: status below 500, an error body that
is JSON with the status's own ``code`` and a ``type`` (in DJL's async mode ``{"code", "error": "<type>:
..."}``), a stream that parses line by line and does not end in an error record, and the endpoint still
alive afterwards. The handler target runs ``handle_sync`` (alone and in DJL batches) and the async
``handle`` read as DJL's async frontend reads it; the routes target serves the model in async mode, as
packages are. Case N of seed S is always the same.

    python scripts/fuzz.py --cases 20000 --seed 1                 # the large run (handler + routes)
    python scripts/fuzz.py --cases 2000 --target handler --batch 8
    python scripts/fuzz.py --cases 20000 --record                 # also write the counts to docs/fuzzing.md

Exit codes: 0 no failures, 1 failures (each printed with its case number), 2 bad command line.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FIXTURES = ROOT / "tests" / "fixtures" / "requests"
DOC = ROOT / "docs" / "fuzzing.md"
# Small limits keep every valid case cheap: generation is not what is being fuzzed.
SETTINGS = {"max_new_tokens": "8", "default_max_new_tokens": "4", "max_inputs": "8", "max_return_sequences": "2"}

SEEDS: list[dict[str, Any]] = [
    {"inputs": "Hello world", "parameters": {"max_new_tokens": 4, "temperature": 0.7, "seed": 1}},
    {"inputs": ["Hello", "Hi there"], "adapters": [None, "alpha"], "parameters": {"max_new_tokens": 3}},
    {"inputs": "Hello", "adapters": "beta", "parameters": {"details": True, "stop": ["\n"], "top_k": 5}},
    {"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 4}},
    {"prompt": "Write a haiku", "max_length": 4, "temperature": 0.8, "top_p": 0.9},
    {"query": "When?", "context": [{"id": "a", "text": "It shipped on 3 May."}, "Returns take 14 days."],
     "parameters": {"max_new_tokens": 4}},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
     "max_tokens": 4, "temperature": 0, "model": "alpha"},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 3, "stream": True,
     "stream_options": {"include_usage": True}},
    {"task": "info"},
]
NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2, 7, 10**6, 2**63, -(2**63), 0.0, -0.0, 0.5, 1.0, 1.5, 2.5, 5e-324, 1e-320,
    1e-6, 1e308, -1e308, "", " ", "x", "base", "alpha", "beta", "nope", "\ud800", "\udfff", "a\ud83d", "😀",
    "\x00", "\u202e", "x" * 5000, "9" * 5000, [], [None], ["x"], [1, 2], [[[[]]]], {}, {"a": 1},
    {"type": "text", "text": "x"}, {"role": "user", "content": "Hi"}, ["user"], {"role": ["user"]},
]
EXTRA_KEYS = [
    "max_new_token", "temprature", "best_of", "typical_p", "watermark", "truncate", "adapter_id", "n",
    "ignore_eos", "ignore_eos_token", "top_n_tokens", "decoder_input_details", "grammar", "logprobs",
    "tools", "response_format", "frequency_penalty", "stop_token_ids", "\ud800", "x" * 300, "", "stream",
]
CONTENT_TYPES = [None, "application/json", "application/json; charset=utf-8", "text/json", "application/x+json",
                 ";;;===", "text/plain", "", "application", "*/*"]
ACCEPTS = [None, "application/json", "*/*", "text/event-stream", "application/jsonlines", "garbage", "text/html",
           "application/json;q=0", ""]
ADAPTER_HEADERS = [None, None, None, "alpha", "beta", "base", "nope", "x" * 300]
# DJL's async frontend writes error bodies itself: {"code": N, "error": "<machine type>: <message>"}
ASYNC_ERROR = re.compile(r"[a-z][a-z_]*: ")


@dataclass(frozen=True)
class Case:
    """One fuzzed request: its raw body and headers."""

    number: int
    body: bytes
    headers: dict[str, str]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _leaves(item, (*path, index))


def _parent(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path[:-1]:
        value = value[step]
    return value


def _mutate(body: Any, rng: random.Random) -> Any:
    paths = [p for p in _leaves(body) if p]
    kind = rng.choice(("replace", "replace", "replace", "add", "remove", "nest"))
    if kind == "replace" and paths:
        path = rng.choice(paths)
        _parent(body, path)[path[-1]] = copy.deepcopy(rng.choice(NASTY))
    elif kind == "add":
        targets = [t for t in (body, body.get("parameters") if isinstance(body, dict) else None) if isinstance(t, dict)]
        if targets:
            rng.choice(targets)[rng.choice(EXTRA_KEYS)] = copy.deepcopy(rng.choice(NASTY))
    elif kind == "remove" and paths:
        path = rng.choice(paths)
        parent = _parent(body, path)
        del parent[path[-1]]
    elif kind == "nest" and paths:
        path = rng.choice(paths)
        value: Any = "Hi"
        for _ in range(rng.choice((2, 10, 40, 200))):
            value = [value]
        _parent(body, path)[path[-1]] = value
    return body


def _break_bytes(raw: bytes, rng: random.Random) -> bytes:
    kind = rng.choice(("utf8", "truncate", "garbage", "digits", "constant", "deep", "bom"))
    where = rng.randrange(len(raw) + 1)
    if kind == "utf8":
        return raw[:where] + rng.choice((b"\xed\xa0\x80", b"\xff", b"\xc3", b"\xf4\x90\x80\x80")) + raw[where:]
    if kind == "truncate":
        return raw[:where]
    if kind == "garbage":
        return raw + rng.choice((b"}", b" x", b"\x00", b",", b"]]]"))
    if kind == "digits":
        return raw.replace(b"4", b"4" + b"9" * 5000, 1)
    if kind == "constant":
        return raw.replace(b"0.7", b"NaN", 1).replace(b"4,", b"Infinity,", 1)
    if kind == "deep":
        return b"[" * 100_000 + raw + b"]" * 100_000
    return b"\xef\xbb\xbf" + raw


def cases(count: int, seed: int) -> Iterator[Case]:
    """``count`` seeded cases; case ``n`` depends only on ``seed`` and ``n``."""
    fixtures = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*.json"))]
    for number in range(count):
        rng = random.Random(f"{seed}:{number}")
        body = copy.deepcopy(rng.choice(SEEDS + fixtures))
        for _ in range(rng.choice((0, 0, 0, 1, 1, 2, 3, 4))):  # a third stay valid: those paths get fuzzed too
            body = _mutate(body, rng)
        raw = json.dumps(body).encode() if rng.random() < 0.7 else json.dumps(body, ensure_ascii=False).encode(
            "utf-8", "surrogatepass")
        if rng.random() < 0.15:
            raw = _break_bytes(raw, rng)
        headers = {}
        for name, options in (("Content-Type", CONTENT_TYPES), ("Accept", ACCEPTS),
                              ("X-Amzn-SageMaker-Adapter-Identifier", ADAPTER_HEADERS)):
            choice = rng.choice(options) if rng.random() < 0.3 else (options[1] if name == "Content-Type" else None)
            if choice is not None:
                headers[name] = choice
        yield Case(number, raw, headers)


@dataclass
class Report:
    """Counts by route and status, and the failures (case number, route, what was wrong)."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[tuple[int, str, str]] = field(default_factory=list)

    def check(self, case: Case, route: str, status: int, content_type: str, body: bytes) -> None:
        self.statuses[(route, status)] += 1
        problem = problem_with(status, content_type, body)
        if problem:
            self.failures.append((case.number, route, problem))


def problem_with(status: int, content_type: str, body: bytes) -> str | None:
    """What is wrong with one answer to client input, or None."""
    if status >= 500:
        return f"status {status}: {body[:200]!r}"
    media = (content_type or "").split(";")[0].strip()
    try:
        if media in ("application/jsonlines", "text/event-stream"):
            records = [json.loads(line.removeprefix("data: ")) for line in body.decode().splitlines()
                       if line.strip() and line != "data: [DONE]"]
            if records and isinstance(records[-1], dict) and "error" in records[-1] and "choices" not in records[-1]:
                return f"stream ended with an error record: {records[-1]}"
            return None
        data = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError) as err:
        return f"status {status}: body is not JSON ({err})"
    if status >= 400:
        if isinstance(data, dict) and isinstance(data.get("OriginalStatusCode"), int) and \
                data["OriginalStatusCode"] >= 500:
            return f"ModelError from a container {data['OriginalStatusCode']}: {body[:200]!r}"
        if isinstance(data, dict) and set(data) == {"code", "error"} and isinstance(data["error"], str):
            if not ASYNC_ERROR.match(data["error"]):
                return f"status {status}: async error without a type: {body[:200]!r}"
            return None if data["code"] == status else f"status {status}: error body says code {data['code']}"
        code = data.get("code", data.get("OriginalStatusCode")) if isinstance(data, dict) else None
        if not isinstance(data, dict) or ("type" not in data and "OriginalMessage" not in data):
            return f"status {status}: error body without a type: {body[:200]!r}"
        if code is not None and status != 424 and code != status:
            return f"status {status}: error body says code {code}"
    return None


def run_handler(all_cases: list[Case], model_dir: Path, report: Report, batch: int = 1) -> None:
    """Every case through ``handle()`` (DJL sync mode), ``batch`` at a time."""
    from djl_python.inputs import Input, request
    from djl_python.inputs import batch as make_batch

    from lora_endpoint.handler import entry

    entry._runtime = entry._Runtime()
    entry.handle_sync(Input({"model_dir": str(model_dir), **SETTINGS}))
    for start in range(0, len(all_cases), batch):
        group = all_cases[start : start + batch]
        inputs = [request(c.body, **{k.replace("-", "_"): v for k, v in c.headers.items()}) for c in group]
        out = entry.handle_sync(inputs[0] if len(group) == 1 else make_batch(*inputs))
        content_type = out.properties.get("Content-Type", "")
        if len(group) == 1:
            body = out.streamed() if out.stream_content is not None else out.body()
            report.check(group[0], "handle", out.code, content_type, body)
            continue
        if out.code != 200 or len(out.content) != len(group):
            for case in group:
                report.failures.append((case.number, "handle-batch", f"batch Output code {out.code}, "
                                                                      f"{len(out.content)} entries"))
            continue
        for index, case in enumerate(group):
            body = out.body(index)
            try:
                item = json.loads(body)
            except ValueError:  # a stream request in a batch: rendered whole, as JSON lines or SSE
                report.check(case, "handle-batch", 200, "text/event-stream" if body.startswith(b"data:")
                             else "application/jsonlines", body)
                continue
            failed = isinstance(item, dict) and "type" in item and isinstance(item.get("code"), int)
            status = item["code"] if failed else 200
            report.check(case, "handle-batch", status, "application/json", body)


def run_handler_async(all_cases: list[Case], model_dir: Path, report: Report) -> None:
    """Every case through the async ``handle()`` (DJL async mode), answered as DJL's frontend answers."""
    from lora_endpoint.handler import entry
    from lora_endpoint.local import async_frontend
    from lora_endpoint.local.djl_io import Call
    from lora_endpoint.local.package import ServedModel
    from lora_endpoint.local.streaming import pump_answer

    entry._runtime = entry._Runtime()
    served = ServedModel(str(model_dir), entry.handle, {"model_dir": str(model_dir), **SETTINGS}, async_mode=True)

    async def run() -> None:
        await served.aload()
        for case in all_cases:
            answer = await async_frontend.answer(served, Call.from_http(case.headers, case.body,
                                                                        model_dir=str(model_dir)))
            body = answer.body if answer.stream is None else b"".join([c async for c in pump_answer(answer)])
            report.check(case, "handle-async", answer.status, answer.content_type, body)

    asyncio.run(run())


ROUTES = ("/invocations", "/predict", "/rag", "/v1/chat/completions", "/endpoints/lora-local/invocations",
          "/endpoints/lora-local/invocations-response-stream")


def run_routes(all_cases: list[Case], url: str, report: Report, rng: random.Random) -> None:
    """Every case to one of the local endpoint's routes, over HTTP (one keep-alive client)."""
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        for case in all_cases:
            route = rng.choice(ROUTES)
            response = client.post(route, content=case.body, headers=case.headers)
            body = response.content
            content_type = response.headers.get("content-type", "")
            if route.endswith("response-stream") and response.status_code == 200:
                body, problem = _event_payloads(body)
                if problem:
                    report.failures.append((case.number, route, problem))
                content_type = response.headers.get("x-amzn-sagemaker-content-type", "")
            report.check(case, route, response.status_code, content_type, body)
        if client.get("/ping").status_code != 200:
            report.failures.append((-1, "/ping", "the endpoint stopped answering"))


def _event_payloads(frames: bytes) -> tuple[bytes, str | None]:
    """The PayloadPart bytes of an AWS event stream, and the problem if it carries a ModelStreamError."""
    from botocore.eventstream import EventStreamBuffer

    buffer = EventStreamBuffer()
    buffer.add_data(frames)
    payload = b""
    for message in buffer:
        headers = cast(dict[str, Any], message.headers)  # botocore types it loosely
        if headers.get(":message-type") == "exception" or headers.get(":event-type") != "PayloadPart":
            return payload, f"event stream carried {headers.get(':exception-type') or headers.get(':event-type')}"
        payload += message.payload
    return payload, None


def build_model(work: Path) -> Path:
    from scripts.tiny_model import build_model_dir

    return build_model_dir(work / "model", adapters=("alpha", "beta"))


def serve(model_dir: Path) -> tuple[str, Callable[[], None]]:
    """The local endpoint on a free port in a thread; returns its URL and a stop function."""
    import socket
    import threading

    import uvicorn

    from lora_endpoint.handler import entry
    from lora_endpoint.local.app import DrainingServer, create_app
    from lora_endpoint.local.package import ServedModel, resolve

    entry._runtime = entry._Runtime()
    served = ServedModel.from_spec(resolve(model_dir))
    served.init_properties.update(SETTINGS)
    app = create_app(served)  # a plain model dir: async mode, as packages are served
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = DrainingServer(uvicorn.Config(app, port=port, log_level="error"), endpoint=app.state.endpoint)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ping").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)

    def stop() -> None:
        server.should_exit = True
        thread.join(30)

    return url, stop


def fuzz(count: int, seed: int, target: str, batch: int, work: Path) -> tuple[Report, float]:
    """Run ``count`` cases against ``target`` (handler, routes or both); the report and the seconds taken."""
    from lora_endpoint.handler import entry
    from lora_endpoint.local.djl_io import ensure_djl_python

    ensure_djl_python()
    started = time.monotonic()
    model_dir = build_model(work)
    report = Report()
    all_cases = list(cases(count, seed))
    saved = entry._runtime  # each target loads the model with the fuzz settings into a runtime of its own
    try:
        if target in ("handler", "both"):
            run_handler(all_cases, model_dir, report, batch=1)
            if batch > 1:
                run_handler(all_cases, model_dir, report, batch=batch)
            run_handler_async(all_cases, model_dir, report)
        if target in ("routes", "both"):
            url, stop = serve(model_dir)
            try:
                run_routes(all_cases, url, report, random.Random(seed))
            finally:
                stop()
    finally:
        entry._runtime = saved
    return report, time.monotonic() - started


def summary(report: Report, count: int, seed: int, seconds: float, command: str) -> str:
    routes = sorted({route for route, _ in report.statuses})
    lines = [f"`{command}`: {count} cases, seed {seed}, {seconds:.0f} s; "
             f"{len(report.failures)} failures (5xx, non-JSON error, bad stream, endpoint down).", "",
             "| target | answers | 2xx | 4xx | 5xx | statuses |", "| --- | --- | --- | --- | --- | --- |"]
    for route in routes:
        counts = {status: n for (r, status), n in report.statuses.items() if r == route}
        total = sum(counts.values())
        band = {b: sum(n for s, n in counts.items() if s // 100 == b) for b in (2, 4, 5)}
        detail = ", ".join(f"{s}: {n}" for s, n in sorted(counts.items()))
        lines.append(f"| `{route}` | {total} | {band[2]} | {band[4]} | {band[5]} | {detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None,
                                     epilog="Exit codes: 0 no failures, 1 failures, 2 bad command line.")
    parser.add_argument("--cases", type=int, default=2000, help="number of cases (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="seed; case N of seed S is always the same (default 1)")
    parser.add_argument("--target", choices=("handler", "routes", "both"), default="both",
                        help="handle_sync() and the async handle() in-process, the local endpoint's routes over "
                             "HTTP (async mode), or both (default)")
    parser.add_argument("--batch", type=int, default=8,
                        help="also run the handler cases as DJL batches of this many (1 = off; default 8)")
    parser.add_argument("--record", action="store_true", help=f"write the counts to {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.cases < 1 or args.batch < 1:
        parser.error("--cases and --batch must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="lora-fuzz-") as tmp:
        report, seconds = fuzz(args.cases, args.seed, args.target, args.batch, Path(tmp))
    for number, route, problem in report.failures[:50]:
        print(f"FAIL case {number} ({route}): {problem}", file=sys.stderr)
    command = "python scripts/fuzz.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = summary(report, args.cases, args.seed, seconds, command.strip())
    print(text)
    if args.record:
        DOC.write_text("# Fuzzing the request path\n\nWritten by `scripts/fuzz.py --record` (see its --help for what "
                       "each case does and what counts as a failure). Figures as measured, one run.\n\n"
                       + text + "\n")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
