"""The benchmark clients: request bodies, token counts, percentiles, the load plan, the driver and TTFT."""

from __future__ import annotations

import json
import math

from scripts.bench_clients import BASE, OURS, VLLM, drive, percentile, plan, ttft_during_stream
from tests.scripts.conftest import FakeCompletions


def test_vllm_body_names_the_adapter_in_model_and_asks_for_exact_greedy_tokens() -> None:
    assert VLLM.body("hi", "a0", 64) == {"model": "a0", "prompt": "hi", "max_tokens": 64, "temperature": 0,
                                         "ignore_eos": True}
    assert VLLM.body("hi", BASE, 8, stream=True)["stream"] is True


def test_ours_body_names_the_adapter_only_when_there_is_one() -> None:
    assert OURS.body("hi", BASE, 8) == {"inputs": "hi", "parameters": {"max_new_tokens": 8, "ignore_eos": True,
                                                                       "do_sample": False}}
    assert OURS.body("hi", "alpha", 8, stream=True)["adapters"] == "alpha"
    assert OURS.body("hi", "alpha", 8, stream=True)["stream"] is True


def test_ours_body_is_a_request_the_handler_accepts_as_greedy_and_ignoring_eos() -> None:
    from lora_endpoint.handler.entry import input_fn

    parsed = input_fn(json.dumps(OURS.body("hi", "alpha", 12)), "application/json")
    assert parsed.adapters == ("alpha",)
    assert (parsed.params.max_new_tokens, parsed.params.ignore_eos, parsed.params.do_sample) == (12, True, False)


def test_token_counts_come_from_each_servers_own_field() -> None:
    assert OURS.tokens({"generated_text": "x", "details": {"generated_tokens": 7}}) == 7
    assert VLLM.tokens({"choices": [], "usage": {"completion_tokens": 5}}) == 5


def test_stream_lines_count_tokens_and_not_framing() -> None:
    assert OURS.stream_tokens('{"token": {"id": 3, "text": "a"}}') == 1
    assert OURS.stream_tokens("") == 0
    assert VLLM.stream_tokens('data: {"choices": [{"text": "a"}]}') == 1
    assert VLLM.stream_tokens('data: {"choices": [{"text": ""}]}') == 0
    assert VLLM.stream_tokens("data: [DONE]") == 0


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert percentile([2.0, 1.0], 50) == 1.0
    assert math.isnan(percentile([], 50))


def test_plan_mixes_models_within_each_step_and_along_each_client() -> None:
    models = [BASE, "a0", "a1", "a2", "a3"]
    requests = plan(16, 3, ["p", "q"], models)
    assert len(requests) == 16 and all(len(mine) == 3 for mine in requests)
    first_step = [mine[0][1] for mine in requests]
    assert set(first_step) == set(models)  # every model in flight at once
    assert [m for _, m in requests[0]] == [BASE, "a0", "a1"]
    assert [p for p, _ in requests[1]] == ["q", "p", "q"]


def test_drive_counts_tokens_and_flags_answers_of_the_wrong_length(fake_vllm: FakeCompletions) -> None:
    stats = drive(fake_vllm.url, VLLM, [[("p", "a0"), ("p", "short")], [("p", BASE)]], 4, stagger_s=0.01)
    summary = stats.summary()
    assert (summary["requests"], summary["tokens"], summary["wrong_counts"], summary["errors"]) == (3, 11, 1, 0)
    assert summary["tok_s"] > 0 and summary["p50_s"] <= summary["p99_s"]
    assert sorted(b["model"] for b in fake_vllm.bodies) == ["a0", BASE, "short"]


def test_drive_counts_errors_apart_and_keeps_the_first(fake_vllm: FakeCompletions) -> None:
    summary = drive(fake_vllm.url, VLLM, [[("p", "broken"), ("p", "a0")]], 4, stagger_s=0).summary()
    assert (summary["requests"], summary["errors"], summary["tokens"]) == (2, 1, 4)
    assert summary["first_error"].startswith("500: ") and "boom" in summary["first_error"]


def test_ttft_reports_a_request_that_waits_for_the_whole_stream(fake_vllm: FakeCompletions) -> None:
    # GIVEN a server that runs one stream at a time
    fake_vllm.serial = True
    # WHEN a request arrives during a long stream
    result = ttft_during_stream(fake_vllm.url, VLLM, "p", long_tokens=40, new_tokens=4, after_tokens=2)
    # THEN its first token came after the long stream had ended
    assert result["long_finished_first"] is True
    assert result["bound_s"] == result["solo_ttft_s"] + 2 * result["step_s"]


def test_ttft_reports_a_request_that_joins_a_running_stream(fake_vllm: FakeCompletions) -> None:
    # GIVEN a server that runs streams side by side, and a long stream of 2 s
    fake_vllm.step_s = 0.02
    result = ttft_during_stream(fake_vllm.url, VLLM, "p", long_tokens=100, new_tokens=4, after_tokens=2)
    # THEN the new request's first token came while the long stream was still running
    assert result["long_finished_first"] is False
