"""The benchmark's clients against the real local endpoint: our request shape, token counts and streams."""

from __future__ import annotations

from scripts.bench_clients import BASE, OURS, drive, plan, ttft_during_stream
from scripts.bench_common import PROMPTS
from tests.local.conftest import Running


def test_staggered_mixed_adapter_clients_get_exactly_the_tokens_asked_for(server: Running) -> None:
    # GIVEN 3 clients, 2 requests each, round-robin over the base model and both adapters
    requests = plan(3, 2, PROMPTS, [BASE, "alpha", "beta"])
    # WHEN they run against the endpoint
    summary = drive(server.url, OURS, requests, 5, stagger_s=0.01).summary()
    # THEN every answer is a 200 with 5 tokens (ignore_eos ran past the tiny model's EOS)
    assert (summary["requests"], summary["errors"], summary["wrong_counts"], summary["tokens"]) == (6, 0, 0, 30)


def test_ttft_reads_our_json_lines_stream(server: Running) -> None:
    result = ttft_during_stream(server.url, OURS, PROMPTS[0], long_tokens=24, new_tokens=4, after_tokens=4)
    assert result["solo_ttft_s"] > 0 and result["ttft_during_s"] > 0
    assert result["step_s"] > 0  # the long stream's lines were read as tokens, one per line
