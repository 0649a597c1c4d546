"""The smoke test: health, info, base and every adapter, one chat, one RAG, bad requests answered 4xx."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .target import Reply, Target


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    status: int
    latency_s: float
    detail: str


def _expect(name: str, reply: Reply, status: int, test: Callable[[Any], str | None] | None = None) -> Check:
    """``test`` returns a problem or None; a wrong status is a problem first."""
    if reply.status != status:
        snippet = reply.text[:160].replace("\n", " ")
        return Check(name, False, reply.status, reply.latency_s, f"expected {status}, got {reply.status}: {snippet}")
    problem = test(reply.json()) if test else None
    return Check(name, problem is None, reply.status, reply.latency_s, problem or "ok")


def _has(key: str) -> Callable[[Any], str | None]:
    def test(data: Any) -> str | None:
        if isinstance(data, list) and data:
            data = data[0]
        return None if isinstance(data, dict) and key in data else f"no {key!r} in the answer"
    return test


def run_smoke(target: Target, *, max_new_tokens: int = 8) -> list[Check]:
    checks = [_expect("health", target.call("health"), 200)]
    info = target.call("info")
    checks.append(_expect("info", info, 200, _has("adapters")))
    data = info.json() if info.ok else None
    adapters = [a["name"] for a in data.get("adapters", [])] if isinstance(data, dict) else []
    params = {"max_new_tokens": max_new_tokens}
    checks.append(_expect("generate (base)", target.call("predict", {"inputs": "Hello", "parameters": params}),
                          200, _has("generated_text")))
    for name in adapters:
        reply = target.call("predict", {"inputs": "Hello", "parameters": params}, adapter=name)
        checks.append(_expect(f"generate ({name})", reply, 200, _has("generated_text")))
    chat = {"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_new_tokens, "temperature": 0}
    checks.append(_expect("chat", target.call("chat", chat), 200, _has("choices")))
    rag = {"query": "What colour is the sky?", "context": ["The sky is blue.", "Grass is green."],
           "parameters": params}
    checks.append(_expect("rag", target.call("rag", rag), 200, _has("sources")))
    bad = {"inputs": "Hello", "parameters": {"max_new_tokens": 0}}
    checks.append(_expect("bad request -> 400", target.call("predict", bad), 400, _has("error")))
    unknown = {"inputs": "Hello", "parameters": params, "adapters": "no-such-adapter"}
    checks.append(_expect("unknown adapter -> 404", target.call("predict", unknown), 404, _has("error")))
    return checks


def table(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'check':<{width}}  result  status  latency  detail"]
    for c in checks:
        lines.append(f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.status or '-':>6}  "
                     f"{c.latency_s * 1000:>5.0f} ms  {c.detail}")
    passed = sum(c.passed for c in checks)
    lines.append(f"{passed}/{len(checks)} passed")
    return "\n".join(lines)
