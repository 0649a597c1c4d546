"""No client input reaches a 5xx; one bad request never fails its batch-mates; cost is bounded before work.

Each case here was a 500 (or a wrong answer for a neighbour) before the hardening issue: the fuzz's six
root causes, DJL batch semantics, the cheap length bound, echo truncation and clean stream endings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_endpoint.handler import entry, lora_batch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "requests"


@pytest.fixture
def served(djl, tiny_model_dir, monkeypatch):  # type: ignore[no-untyped-def]
    from djl_python.inputs import Input

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    assert entry.handle_sync(Input({"model_dir": str(tiny_model_dir), "max_new_tokens": "64"})) is None
    return entry


def call(body, **headers):  # type: ignore[no-untyped-def]
    from djl_python.inputs import request

    headers.setdefault("Content_Type", "application/json")
    raw = body if isinstance(body, str | bytes) else json.dumps(body)
    return entry.handle_sync(request(raw, **headers))


def batch_call(*bodies):  # type: ignore[no-untyped-def]
    from djl_python.inputs import batch, request

    raw = [b if isinstance(b, str | bytes) else json.dumps(b) for b in bodies]
    return entry.handle_sync(batch(*(request(r, Content_Type="application/json") for r in raw)))


GREEDY = {"max_new_tokens": 6, "do_sample": False}


@pytest.mark.parametrize(
    "raw",
    [
        '{"inputs": "Hi \\ud800 there"}',  # lone surrogate escape in a prompt
        b'{"inputs": "Hi \xed\xa0\x80 there"}',  # the same as raw (invalid) UTF-8 bytes
        '{"messages": [{"role": "user", "content": "x\\udfff"}]}',  # in chat content
        '{"inputs": "Hi", "\\ud800": 1}',  # in a field name
        '{"messages": [{"role": ["user"], "content": "Hi"}]}',  # a role that is a list
        '{"messages": [{"role": {"a": 1}, "content": "Hi"}]}',  # ... or an object
        '{"inputs": "Hi", "parameters": {"seed": ' + "9" * 5000 + "}}",  # over Python's 4300-digit limit
        '{"inputs": "Hi", "extra": [' + "1" * 5000 + "]}",  # anywhere in the body
        '{"inputs": "Hi", "parameters": {"temperature": 1e999}}',
        "[" * 50_000 + "]" * 50_000,
        '{"inputs": ' + "[" * 40 + '"Hi"' + "]" * 40 + "}",
    ],
)
def test_fuzz_root_causes_are_400s(served, raw) -> None:
    out = call(raw)
    assert out.code == 400, out.body()
    assert out.json()["type"] == "invalid_request"


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("knob", [{"temperature": 5e-324}, {"top_p": 5e-324}, {"temperature": 5e-324, "top_p": 5e-324}])
def test_tiny_temperature_and_top_p_keep_softmax_finite(served, knob, stream) -> None:
    params = {"max_new_tokens": 6, "do_sample": True, "seed": 1, **knob}
    out = call({"inputs": "Hello", "parameters": params, "stream": stream})
    assert out.code == 200
    if stream:
        lines = [json.loads(line) for line in out.streamed().splitlines()]
        assert "generated_text" in lines[-1] and "error" not in lines[-1]
    else:
        assert out.json()["details"]["finish_reason"] in ("length", "eos_token")
    # a temperature below 1e-5 is greedy, as in vLLM
    if knob.get("temperature") and not stream:
        greedy = call({"inputs": "Hello", "parameters": {**GREEDY}}).json()
        assert out.json()["generated_text"] == greedy["generated_text"]


def test_batch_with_bad_items_answers_every_good_one_as_alone(served) -> None:
    good = [{"inputs": "Hello", "adapters": "alpha", "parameters": GREEDY},
            {"inputs": "Hello world", "parameters": GREEDY},
            {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0, "model": "beta"}]
    bad = ['{"inputs": "x\\ud800"}', '{"messages": [{"role": [1], "content": "Hi"}]}',
           '{"inputs": "Hi", "adapters": "nope"}']
    alone = [call(b).json() for b in good]
    out = batch_call(good[0], bad[0], good[1], bad[1], good[2], bad[2])
    # DJL gives a batch one status: a non-2xx would send the first item's body to every caller.
    assert out.code == 200
    bodies = [out.json(i) for i in range(6)]
    assert bodies[0] == alone[0] and bodies[2] == alone[1]
    assert bodies[4]["choices"] == alone[2]["choices"]
    assert [bodies[i]["code"] for i in (1, 3, 5)] == [400, 400, 404]
    assert [k for k, _ in out.content] == [f"batch_{i}.data" for i in range(6)]


def test_batch_where_every_item_fails_alike_still_gives_each_caller_its_own_error(served) -> None:
    out = batch_call({"inputs": "Hi", "adapters": "nope1"}, {"inputs": "Hi", "adapters": "nope2"})
    assert out.code == 200  # 404 here would answer both callers with item 0's body
    assert ["nope1" in out.json(0)["message"], "nope2" in out.json(1)["message"]] == [True, True]


def test_a_row_with_non_finite_scores_fails_only_its_own_request(served, monkeypatch) -> None:
    import torch

    model = entry._runtime.model
    layer = model.model.base_model.model.model.layers[0].self_attn.v_proj  # NaN values reach the logits
    weight = layer.lora_B["beta"].weight
    saved = weight.detach().clone()
    good = {"inputs": "Hello", "adapters": "alpha", "parameters": GREEDY}
    alone = call(good).json()
    with torch.no_grad():
        weight.fill_(float("nan"))
    try:
        out = batch_call(good, {"inputs": "Hello", "adapters": "beta", "parameters": GREEDY},
                         {"inputs": "Hello", "adapters": "beta", "parameters": {**GREEDY, "do_sample": True}})
        assert out.json(0) == alone
        assert [out.json(i)["code"] for i in (1, 2)] == [500, 500]
        assert out.json(1)["message"] == "internal error; see the endpoint logs"
    finally:
        with torch.no_grad():
            weight.copy_(saved)


def test_a_forward_pass_that_raises_is_retried_request_by_request(served, monkeypatch) -> None:
    model = entry._runtime.model
    forward = model.model.forward

    def fragile(*args, **kwargs):  # type: ignore[no-untyped-def]
        names = kwargs.get("adapter_names") or [getattr(model.model, "active_adapter", None)]
        if "beta" in names:
            raise RuntimeError("kernel failure for beta")
        return forward(*args, **kwargs)

    good = {"inputs": "Hello", "adapters": "alpha", "parameters": GREEDY}
    alone = call(good).json()
    # The stand-in kernel tells rows apart by peft's routing (adapter_names, the active adapter).
    monkeypatch.setattr(lora_batch.BatchedLora, "supported", property(lambda self: False))
    monkeypatch.setattr(model.model, "forward", fragile)
    out = batch_call(good, {"inputs": "Hello", "adapters": "beta", "parameters": GREEDY})
    assert out.json(0) == alone
    assert out.json(1)["code"] == 500 and "kernel" not in out.body(1).decode()


def test_over_long_prompt_is_refused_from_its_length_without_tokenising(served, monkeypatch) -> None:
    tokenizer = entry._runtime.model.tokenizer
    seen: list[int] = []
    original = type(tokenizer).__call__

    def counting(self, text, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(len(text) if isinstance(text, str) else 0)
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer), "__call__", counting)
    out = call({"inputs": "a" * 5_000_000})
    assert out.code == 400 and out.json()["type"] == "context_length_exceeded"
    assert "5000000 characters" in out.json()["message"]
    assert not seen or max(seen) < 100_000


def test_truncate_keeps_the_last_prompt_tokens(served) -> None:
    long_prompt = "Hello world " * 2000
    out = call({"inputs": long_prompt, "parameters": {**GREEDY, "truncate": 20, "details": True}})
    assert out.code == 200
    assert out.json()["details"]["prompt_tokens"] == 20


def test_error_messages_quote_at_most_a_few_dozen_characters(served) -> None:
    huge = "x" * 2_000_000
    for body in ({"inputs": "Hi", "parameters": {"temperature": huge}}, {"inputs": "Hi", huge: 1},
                 {"task": huge}, {"messages": [{"role": huge, "content": "Hi"}]}):
        out = call(body)
        assert out.code == 400
        assert len(out.body()) < 2000


@pytest.mark.parametrize("name", ["tgi_client_generate", "tgi_client_stream", "lorax_client_adapter",
                                  "lmi_client_generate", "lmi_client_chat"])
def test_real_clients_requests_are_answered(served, name) -> None:
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    out = call(body)
    assert out.code == 200
    answer = [json.loads(line) for line in out.streamed().splitlines()][-1] if body.get("stream") else out.json()
    # the adapter the client named is the one that answered: same text as asking through `adapters`
    adapter = body.get("adapters") or (body.get("parameters") or {}).get("adapter_id")
    if "messages" in body:
        via = {**body, "adapters": None, "model": adapter}
        assert answer["choices"] == call(via).json()["choices"]
    elif adapter:
        plain = {"inputs": body["inputs"], "adapters": adapter,
                 "parameters": {"max_new_tokens": body["parameters"]["max_new_tokens"], "do_sample": False,
                                "details": True}}
        assert answer["generated_text"] == call(plain).json()["generated_text"]
        assert answer["generated_text"] != call({**plain, "adapters": None}).json()["generated_text"]
    else:
        assert answer["details"]["finish_reason"] in ("length", "eos_token")


@pytest.mark.parametrize(
    ("params", "name"),
    [({"best_of": 2}, "best_of"), ({"watermark": True}, "watermark"), ({"typical_p": 0.5}, "typical_p"),
     ({"decoder_input_details": True}, "decoder_input_details"), ({"grammar": {"type": "json"}}, "grammar"),
     ({"frequency_penalty": 0.5}, "frequency_penalty"), ({"adapter_source": "hub"}, "adapter_source")],
)
def test_what_we_cannot_do_is_refused_naming_the_parameter(served, params, name) -> None:
    out = call({"inputs": "Hi", "parameters": params})
    assert out.code == 400
    assert out.json()["error"]["param"] == f"parameters.{name}"
    assert "not supported" in out.json()["message"]


def test_neutral_values_of_unsupported_parameters_are_no_ops(served) -> None:
    base = call({"inputs": "Hello", "parameters": GREEDY}).json()
    neutral = {"best_of": 1, "watermark": False, "typical_p": 1.0, "top_n_tokens": 0, "frequency_penalty": 0,
               "decoder_input_details": False, "grammar": None, "top_k": -1, "n": 1}
    assert call({"inputs": "Hello", "parameters": {**GREEDY, **neutral}}).json() == base


def test_a_typo_lists_what_is_accepted(served) -> None:
    out = call({"inputs": "Hi", "parameters": {"max_new_token": 5}})
    assert out.code == 400 and "max_new_tokens" in out.json()["message"] and "accepted" in out.json()["message"]


def test_adapter_id_and_adapters_must_agree(served) -> None:
    out = call({"inputs": "Hi", "adapters": "alpha", "parameters": {"adapter_id": "beta"}})
    assert out.code == 400 and out.json()["error"]["param"] == "parameters.adapter_id"


def test_base_means_the_base_model_everywhere(served) -> None:
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0}
    assert call({**chat, "model": "base"}).json()["choices"] == call(chat).json()["choices"]
    plain = {"inputs": "Hi", "parameters": GREEDY}
    assert call({**plain, "adapters": "base"}).json() == call(plain).json()
    rag = {"query": "Q?", "context": ["A."], "parameters": GREEDY}
    assert call({**rag, "adapters": "base"}).json() == call(rag).json()


def test_developer_role_reads_as_system(served) -> None:
    system = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
              "max_tokens": 5, "temperature": 0}
    developer = {**system, "messages": [{"role": "developer", "content": "Be brief."}, system["messages"][1]]}
    assert call(developer).json()["choices"] == call(system).json()["choices"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"Content_Type": ";;;==="}, 415), ({"Content_Type": "text/plain"}, 415), ({"Accept": "garbage"}, 406),
     ({"Accept": "text/html"}, 406), ({"Accept": "application/json;q=0"}, 406),
     ({"Accept": "text/html, application/*;q=0.5"}, 200), ({"Accept": "*/*"}, 200),
     ({"Content_Type": "application/json; charset=utf-8"}, 200)],
)
def test_media_types_are_checked(served, headers, status) -> None:
    out = call({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, **headers)
    assert out.code == status, out.body()


def _fail_from_step(monkeypatch, step: int) -> None:  # type: ignore[no-untyped-def]
    """Make every row fail at decode step ``step`` (0 is the prefill)."""
    import lora_endpoint.handler.generation as generation

    real = generation._pick_tokens
    calls = {"n": 0}

    def failing(logits, rows, histories, generators):  # type: ignore[no-untyped-def]
        tokens, failed = real(logits, rows, histories, generators)
        calls["n"] += 1
        return tokens, (set(range(len(rows))) if calls["n"] > step else failed)

    monkeypatch.setattr(generation, "_pick_tokens", failing)


def test_a_stream_that_fails_after_its_first_byte_ends_with_an_error_line(served, monkeypatch) -> None:
    _fail_from_step(monkeypatch, 3)
    out = call({"inputs": "Hello", "stream": True, "parameters": {"max_new_tokens": 20, "ignore_eos": True}})
    assert out.code == 200
    lines = [json.loads(line) for line in out.streamed().splitlines()]
    assert all("token" in line for line in lines[:-1]) and len(lines) == 4
    assert lines[-1]["type"] == "internal_error" and lines[-1]["details"]["finish_reason"] == "error"


def test_a_chat_stream_that_fails_ends_with_an_error_event_then_done(served, monkeypatch) -> None:
    _fail_from_step(monkeypatch, 2)
    out = call({"messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 20,
                "ignore_eos": True})
    events = [e.removeprefix("data: ") for e in out.streamed().decode().split("\n\n") if e]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["type"] == "internal_error"


def test_a_prefill_failure_still_gets_a_status(served, monkeypatch) -> None:
    _fail_from_step(monkeypatch, 0)
    out = call({"inputs": "Hello", "stream": True})
    assert out.code == 500 and out.stream_content is None
    assert out.json()["type"] == "internal_error"
