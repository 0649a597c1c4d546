"""Issue 3's request shapes end to end through handle(): chat (OpenAI schema), RAG, info, streaming, time budget."""

from __future__ import annotations

import json
import time

import pytest

from lora_endpoint.handler import entry


@pytest.fixture
def served(djl, tiny_model_dir, monkeypatch):  # type: ignore[no-untyped-def]
    from djl_python.inputs import Input

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    assert entry.handle_sync(Input({"model_dir": str(tiny_model_dir), "max_new_tokens": "128"})) is None
    return entry


def call(body, **headers):  # type: ignore[no-untyped-def]
    from djl_python.inputs import request

    headers.setdefault("Content_Type", "application/json")
    return entry.handle_sync(request(json.dumps(body), **headers))


def assert_chat_completion(body: dict, n: int = 1) -> None:
    """Field by field against OpenAI's ChatCompletion schema."""
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int) and isinstance(body["model"], str)
    assert len(body["choices"]) == n
    for index, choice in enumerate(body["choices"]):
        assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
        assert choice["index"] == index and choice["logprobs"] is None
        assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
        assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


CHAT = {
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}],
    "max_tokens": 10,
    "temperature": 0,
}


def test_chat_completion_matches_the_openai_schema_and_model_switches_adapters(served) -> None:
    base = call(CHAT).json()
    alpha = call({**CHAT, "model": "alpha"}).json()
    beta = call({**CHAT, "model": "beta"}).json()
    for body in (base, alpha, beta):
        assert_chat_completion(body)
    assert alpha["model"] == "alpha"
    texts = {b["choices"][0]["message"]["content"] for b in (base, alpha, beta)}
    assert len(texts) == 3
    assert call({**CHAT, "model": served._runtime.model.base_name}).json()["choices"] == base["choices"]


def test_chat_mixed_with_plain_requests_in_one_batch(served) -> None:
    from djl_python.inputs import batch, request

    bodies = [{**CHAT, "model": "alpha"}, {"inputs": "Hello world", "adapters": "beta"}, {**CHAT, "model": "beta"}]
    singles = [call(b).json() for b in bodies]
    out = entry.handle_sync(batch(*(request(json.dumps(b), Content_Type="application/json") for b in bodies)))
    together = [out.json(i) for i in range(3)]
    for got, want in zip(together, singles, strict=True):
        if "choices" in want:
            assert got["choices"] == want["choices"] and got["usage"] == want["usage"]
        else:
            assert got == want


def test_adapter_header_selects_the_chat_adapter(served) -> None:
    by_model = call({**CHAT, "model": "beta"}).json()
    by_header = call(CHAT, X_Amzn_SageMaker_Adapter_Identifier="beta").json()
    assert by_header["choices"] == by_model["choices"]
    assert call(CHAT).json()["choices"] != by_model["choices"]


def test_chat_n_and_seed(served) -> None:
    body = call({**CHAT, "n": 2, "temperature": 0.9, "seed": 5, "model": "alpha"}).json()
    assert_chat_completion(body, n=2)
    again = call({**CHAT, "n": 2, "temperature": 0.9, "seed": 5, "model": "alpha"}).json()
    assert again["choices"] == body["choices"]


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role must be one of"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}, "only text parts"),
        ({"tools": [{"type": "function"}]}, "tool calling is not supported"),
        ({"max_tokens": 0}, "max_tokens must be 1..128"),
        ({"model": "gamma"}, "'gamma' is not served"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop may hold at most 4"),
        ({"wat": 1}, "unknown field in a chat request: wat"),
    ],
)
def test_bad_chat_requests(served, change, needle) -> None:
    out = call({**CHAT, **change})
    assert out.code in (400, 404)
    assert needle in out.json()["message"]


def test_chat_stream_is_sse_ending_in_done_with_usage(served) -> None:
    plain = call({**CHAT, "model": "alpha"}).json()
    out = call({**CHAT, "model": "alpha", "stream": True, "stream_options": {"include_usage": True}})
    assert out.properties["Content-Type"] == "text/event-stream"
    events = [e for e in out.streamed().decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: ") :]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(ch["delta"].get("content", "") for c in chunks for ch in c["choices"])
    assert text == plain["choices"][0]["message"]["content"]
    finishes = [ch["finish_reason"] for c in chunks for ch in c["choices"] if ch["finish_reason"]]
    assert finishes == [plain["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == plain["usage"]


def test_closing_a_stream_stops_generation(served) -> None:
    out = call({"inputs": "Hello", "parameters": {"max_new_tokens": 100}, "stream": True})
    first = next(out.stream_content)
    assert first
    out.stream_content.close()  # what the server does when the client disconnects
    model = served._runtime.model
    assert model.lock.acquire(timeout=1)  # generation let go of the model
    model.lock.release()


RAG = {
    "query": "What is the capital of France?",
    "context": [{"id": "a", "text": "Paris is the capital of France."}, "The fox is quick and brown."],
    "parameters": {"max_new_tokens": 8},
}


def test_rag_answers_with_sources(served) -> None:
    body = call(RAG).json()
    assert set(body) == {"generated_text", "sources", "dropped_sources", "details"}
    assert body["sources"] == ["a", 1] and body["dropped_sources"] == []
    assert body["details"]["prompt_tokens"] > 0


def test_rag_context_that_does_not_fit_reports_the_sources_kept(served) -> None:
    # GIVEN passages that together exceed the 256-token window, the second one alone too big
    long = "word " * 150
    context = [
        {"id": "p1", "text": "Paris is the capital."},
        {"id": "p2", "text": long},
        {"id": "p3", "text": "France is in Europe."},
        {"id": "p4", "text": long},
    ]
    body = call({**RAG, "context": context, "parameters": {"max_new_tokens": 40}}).json()
    assert "p1" in body["sources"] and "p4" in body["dropped_sources"]
    assert set(body["sources"]) | set(body["dropped_sources"]) == {"p1", "p2", "p3", "p4"}
    assert body["details"]["prompt_tokens"] + 40 <= 256


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"query": "  "}, "query must be a non-empty string"),
        ({"context": []}, "context must be a non-empty list"),
        ({"context": [""]}, "context[0] text must be a non-empty string"),
        ({"context": ["word " * 400]}, "no context passage fits"),
    ],
)
def test_bad_rag_requests(served, change, needle) -> None:
    out = call({**RAG, **change})
    assert out.code == 400
    assert needle in out.json()["message"]


def test_info_lists_real_adapters_with_ranks(served) -> None:
    body = call({"task": "info"}).json()
    assert {a["name"]: a["rank"] for a in body["adapters"]} == {"alpha": 4, "beta": 4}
    assert body["adapters"][0]["target_modules"] == ["q_proj", "v_proj"]
    assert body["context_length"] == 256 and body["limits"]["max_new_tokens"] == 128
    # Callers see names, ranks and limits; the host's paths, memory and library versions stay in its log.
    assert set(body) == {"base_model", "context_length", "merged_adapter", "default_adapter", "adapters",
                         "failed_adapters", "limits", "just_in_time_adapters", "engine"}
    assert set(body["adapters"][0]) == {"name", "rank", "alpha", "target_modules", "alias", "origin", "pinned",
                                        "resident"}
    assert "/" not in json.dumps(body["base_model"])


def test_time_budget_ends_a_long_request_with_time_limit(djl, tiny_model_dir, monkeypatch) -> None:
    from djl_python.inputs import Input

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    entry.handle_sync(Input({"model_dir": str(tiny_model_dir), "time_budget_s": "0.3", "max_new_tokens": "100000"}))
    monkeypatch.setattr(entry._runtime.model, "context_length", 200_000)  # room for a very long answer
    # Sampling may draw </s> early on a fast machine; without EOS only the budget can end this request.
    monkeypatch.setattr("lora_endpoint.handler.generation._eos_ids", lambda *_args: frozenset())
    started = time.monotonic()
    body = call({"inputs": "Hello", "parameters": {"max_new_tokens": 100000, "do_sample": True, "seed": 3}}).json()
    elapsed = time.monotonic() - started
    assert body["details"]["finish_reason"] == "time_limit"
    assert 0 < body["details"]["generated_tokens"] < 100000
    assert elapsed < 3.0  # well inside the bound, with room for a slow CI machine
