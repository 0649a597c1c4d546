"""Benchmark clients: staggered HTTP clients over two APIs, and the time to first token during a stream.

Two APIs carry the same request: ours (``POST /invocations``, LMI/TGI shape) and vLLM's OpenAI
completions (``POST /v1/completions``, the adapter in ``model``). Every request is greedy and runs to
exactly ``new_tokens`` (``ignore_eos``); each answer's own token count is checked against that, so both
sides are known to have done the same work.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import statistics
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

BASE = "base"
"""The name that means "no adapter" in a client's plan (vLLM serves the base model under it)."""


@dataclass(frozen=True)
class Api:
    """One server's way of asking for ``new_tokens`` greedy tokens, and of counting what came back."""

    name: str
    path: str

    def body(self, prompt: str, model: str, new_tokens: int, *, stream: bool = False) -> dict[str, Any]:
        if self.name == "ours":
            body: dict[str, Any] = {"inputs": prompt, "parameters": {
                "max_new_tokens": new_tokens, "ignore_eos": True, "do_sample": False}}
            if model != BASE:
                body["adapters"] = model
            return {**body, "stream": True} if stream else body
        return {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "ignore_eos": True,
                **({"stream": True} if stream else {})}

    def tokens(self, answer: Any) -> int:
        """Generated tokens as the server reports them: ``details.generated_tokens`` or ``usage``."""
        if self.name == "ours":
            return int(answer["details"]["generated_tokens"])
        return int(answer["usage"]["completion_tokens"])

    def stream_tokens(self, line: str) -> int:
        """Tokens carried by one line of a stream (0 for framing, ``[DONE]`` or blank lines)."""
        if self.name == "ours":
            return 1 if line.startswith("{") and '"token"' in line else 0
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            return 0
        chunk = json.loads(line[5:])
        return 1 if any(choice.get("text") for choice in chunk.get("choices", [])) else 0


OURS = Api("ours", "/invocations")
VLLM = Api("vllm", "/v1/completions")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


@dataclass
class RunStats:
    clients: int
    requests: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    wrong_counts: int = 0
    """Answers whose token count differs from ``new_tokens``: a side that did other work than asked."""
    first_error: str = ""

    def summary(self) -> dict[str, Any]:
        return {"clients": self.clients, "requests": self.requests, "tokens": self.tokens, "wall_s": self.wall_s,
                "tok_s": self.tokens / self.wall_s if self.wall_s else 0.0,
                "p50_s": percentile(self.latencies, 50), "p99_s": percentile(self.latencies, 99),
                "errors": self.errors, "wrong_counts": self.wrong_counts, "first_error": self.first_error}


def plan(clients: int, per_client: int, prompts: Sequence[str], models: Sequence[str]) -> list[list[tuple[str, str]]]:
    """Each client's (prompt, model) requests: client i's j-th takes prompt and model i + j, round-robin, so
    every step of a loaded run mixes adapters and the base model."""
    return [[(prompts[(i + j) % len(prompts)], models[(i + j) % len(models)]) for j in range(per_client)]
            for i in range(clients)]


def drive(url: str, api: Api, requests: list[list[tuple[str, str]]], new_tokens: int, stagger_s: float,
          timeout_s: float = 600) -> RunStats:
    """One thread per client, client i starting ``i * stagger_s`` after the first, each sending its requests
    in a row; tokens/s is all tokens over the wall time from the first start to the last answer."""
    import httpx

    stats = RunStats(clients=len(requests))
    lock = threading.Lock()

    def client(index: int, mine: list[tuple[str, str]]) -> None:
        time.sleep(index * stagger_s)
        with httpx.Client(timeout=timeout_s) as http:
            for prompt, model in mine:
                start = time.perf_counter()
                try:
                    response = http.post(url + api.path, json=api.body(prompt, model, new_tokens))
                    answer, status = response.json(), response.status_code
                except (httpx.HTTPError, ValueError) as err:
                    answer, status = {"error": repr(err)}, 0
                elapsed = time.perf_counter() - start
                with lock:
                    stats.requests += 1
                    if status != 200:
                        stats.errors += 1
                        stats.first_error = stats.first_error or f"{status}: {json.dumps(answer)[:200]}"
                        continue
                    count = api.tokens(answer)
                    stats.tokens += count
                    stats.wrong_counts += count != new_tokens
                    stats.latencies.append(elapsed)

    threads = [threading.Thread(target=client, args=(i, mine)) for i, mine in enumerate(requests)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats.wall_s = time.perf_counter() - start
    return stats


def _stream(url: str, api: Api, prompt: str, new_tokens: int,
            timeout_s: float) -> Generator[tuple[float, int], None, None]:
    """(seconds since the request was sent, tokens) for each line of a streamed answer that carries tokens."""
    import httpx

    start = time.perf_counter()
    with httpx.Client(timeout=timeout_s) as http, \
            http.stream("POST", url + api.path, json=api.body(prompt, BASE, new_tokens, stream=True)) as response:
        if response.status_code != 200:
            raise RuntimeError(f"stream answered {response.status_code}: {response.read()[:200]!r}")
        for line in response.iter_lines():
            count = api.stream_tokens(line.strip())
            if count:
                yield time.perf_counter() - start, count


def _first_token_s(url: str, api: Api, prompt: str, new_tokens: int, timeout_s: float) -> float:
    """Seconds to the first token of a streamed request; the stream is closed then (the server stops it)."""
    with contextlib.closing(_stream(url, api, prompt, new_tokens, timeout_s)) as lines:
        for at, _ in lines:
            return at
    raise RuntimeError("the stream ended without a token")


def ttft_during_stream(url: str, api: Api, prompt: str, *, long_tokens: int, new_tokens: int, after_tokens: int,
                       timeout_s: float = 600) -> dict[str, float | bool]:
    """A request's time to first token alone, then while a ``long_tokens`` stream is running (sent once that
    stream has ``after_tokens`` tokens out). ``step_s`` is the long stream's median gap between tokens
    before the arrival; the target bound is the solo TTFT (its own prefill) plus two such steps."""
    solo = _first_token_s(url, api, prompt, new_tokens, timeout_s)
    arrived = threading.Event()
    times: list[float] = []
    done_at: list[float] = []

    def long_stream() -> None:
        count = 0
        for at, tokens in _stream(url, api, prompt, long_tokens, timeout_s):
            times.append(at)
            count += tokens
            if count >= after_tokens:
                arrived.set()
        done_at.append(time.perf_counter())
        arrived.set()

    runner = threading.Thread(target=long_stream)
    runner.start()
    if not arrived.wait(timeout_s):
        raise RuntimeError("the long stream sent no tokens")
    gaps = [b - a for a, b in itertools.pairwise(list(times))]
    step = statistics.median(gaps) if gaps else float("nan")
    start = time.perf_counter()
    ttft = _first_token_s(url, api, prompt, new_tokens, timeout_s)
    first_at = start + ttft
    runner.join(timeout_s)
    return {"solo_ttft_s": solo, "step_s": step, "ttft_during_s": ttft, "bound_s": solo + 2 * step,
            "long_finished_first": bool(done_at) and done_at[0] < first_at}
