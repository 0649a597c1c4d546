"""A bounded load test: N clients, a request count and/or a duration, a prompt mix and an adapter mix.

Always stops by itself: at ``requests`` requests or after ``duration_s`` seconds, whichever comes first
(each request is bounded by the target's timeout too). Reports latency percentiles, requests/s,
generated tokens/s (from ``details.generated_tokens``, or ``usage.completion_tokens`` for chat) and
errors by status.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .target import Reply, Target

DEFAULT_PROMPTS = ("Hello", "Tell me a story about a cat.", "What is the capital of France?",
                   "Write a haiku about the sea.")
MAX_REQUESTS = 1_000_000
MAX_DURATION_S = 24 * 3600.0


@dataclass
class LoadReport:
    requests: int = 0
    ok: int = 0
    elapsed_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    generated_tokens: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def percentile(self, q: float) -> float:
        """Nearest-rank percentile of the successful requests' latencies (0 when there are none)."""
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
        return ordered[rank - 1]

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(self.elapsed_s, 1e-9)
        return {
            "requests": self.requests, "ok": self.ok, "errors": dict(sorted(self.errors.items())),
            "elapsed_s": round(self.elapsed_s, 3),
            "requests_per_s": round(self.requests / elapsed, 3),
            "generated_tokens": self.generated_tokens,
            "tokens_per_s": round(self.generated_tokens / elapsed, 3),
            "latency_ms": {f"p{q}": round(self.percentile(q) * 1000, 1) for q in (50, 90, 99)},
        }


def generated_tokens(reply: Reply) -> int:
    """Tokens generated, from the answer (whole JSON, or the last JSON line / SSE event of a stream)."""
    candidates: list[Any] = [reply.json()]
    if candidates[0] is None:
        for line in reversed(reply.text.splitlines()):
            line = line.removeprefix("data: ").strip()
            if line and line != "[DONE]":
                try:
                    candidates = [json.loads(line)]
                except ValueError:
                    return 0
                break
    data = candidates[0]
    items = data if isinstance(data, list) else [data]
    total = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("details"), dict):
            total += int(item["details"].get("generated_tokens", 0))
        elif isinstance(item.get("usage"), dict):
            total += int(item["usage"].get("completion_tokens", 0))
    return total


def run_load(target: Target, *, concurrency: int, requests: int | None = None, duration_s: float | None = None,
             prompts: Sequence[str] = DEFAULT_PROMPTS, adapters: Sequence[str | None] = (None,),
             stream: bool = False, max_new_tokens: int = 16) -> LoadReport:
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    if requests is None and duration_s is None:
        requests = 100
    limit = min(requests if requests is not None else MAX_REQUESTS, MAX_REQUESTS)
    deadline = time.monotonic() + min(duration_s if duration_s is not None else MAX_DURATION_S, MAX_DURATION_S)
    counter = itertools.count()
    lock = threading.Lock()
    report = LoadReport()
    mix = list(itertools.product(prompts, adapters))

    def worker() -> None:
        while time.monotonic() < deadline:
            index = next(counter)
            if index >= limit:
                return
            prompt, adapter = mix[index % len(mix)]
            body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens}}
            reply = target.call("predict", body, adapter=adapter, stream=stream)
            with lock:
                report.requests += 1
                if reply.ok:
                    report.ok += 1
                    report.latencies_s.append(reply.latency_s)
                    report.generated_tokens += generated_tokens(reply)
                else:
                    report.errors[str(reply.status) if reply.status else "unreachable"] += 1

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="load") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    report.elapsed_s = time.monotonic() - start
    return report
