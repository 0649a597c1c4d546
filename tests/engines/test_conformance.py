"""One conformance suite for every engine behind the engine interface: shapes, statuses, streaming, stops,
seeds, adapters, run-time registration, time budget, overload.

``make test`` runs it on the transformers engine. ``make test-vllm`` runs it in ``.venv-vllm`` on vLLM's
CPU build too (``LORA_TEST_ENGINES=transformers,vllm``), and there also checks that both engines answer
alike (greedy). The model has head dim 64 (vLLM's CPU attention refuses 16).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.errors import HandlerError, ModelOverloaded, UnknownAdapter
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.generate import GenerateRequest
from lora_endpoint.handler.loading import LoadedModel, load_model
from lora_endpoint.handler.sampling import SamplingParams
from lora_endpoint.handler.service import run
from lora_endpoint.handler.streaming import stream

ENGINES = [e.strip() for e in os.environ.get("LORA_TEST_ENGINES", "transformers").split(",") if e.strip()]
PROMPTS = ("The quick brown fox", "Hello world, this is")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("conformance") / "pkg"
    config = TinyModelConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                             num_key_value_heads=1, max_position_embeddings=512, initializer_range=0.02)
    base = build_tiny_model(root / "base", config)
    build_lora_adapter(base, root / "adapters" / "alpha", seed=1, r=8, alpha=16, scale=4.0)
    build_lora_adapter(base, root.parent / "spare" / "gamma", seed=2, r=8, alpha=16, scale=4.0)
    return root


@pytest.fixture(scope="module", params=ENGINES)
def lm(request: pytest.FixtureRequest, model_dir: Path, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[LoadedModel]:
    settings = HandlerSettings(engine=request.param, max_batch_rows=8, max_queue=4, time_budget_s=30,
                               adapter_cache_dir=str(tmp_path_factory.mktemp("cache")))
    loaded = load_model(model_dir, settings)
    assert loaded.engine_kind == request.param
    yield loaded
    if loaded.engine is not None:
        loaded.engine.stop()


def _generate(lm: LoadedModel, adapter: str | None = None, **params: Any) -> dict[str, Any]:
    sampling = SamplingParams(**{"max_new_tokens": 8, "ignore_eos": True, **params})
    request = GenerateRequest(inputs=(PROMPTS[0],), adapters=(adapter,), params=sampling, details=True)
    answer = run(lm, [request])[0]
    if isinstance(answer, HandlerError):
        raise answer
    return answer  # type: ignore[no-any-return]


def test_shapes_and_finish_reasons(lm: LoadedModel) -> None:
    answer = _generate(lm)
    assert isinstance(answer["generated_text"], str) and answer["generated_text"]
    assert answer["details"]["finish_reason"] == "length" and answer["details"]["generated_tokens"] == 8
    assert len(answer["details"]["tokens"]) == 8


def test_greedy_is_deterministic_and_a_seed_repeats_a_sample(lm: LoadedModel) -> None:
    assert _generate(lm) == _generate(lm)
    sampled = [_generate(lm, do_sample=True, temperature=1.0, seed=7) for _ in range(2)]
    assert sampled[0]["generated_text"] == sampled[1]["generated_text"]


def test_a_stop_sequence_ends_the_row_before_it(lm: LoadedModel) -> None:
    full = _generate(lm, max_new_tokens=12)["generated_text"]
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    if not stop.strip():
        pytest.skip("the greedy answer has no usable stop text here")
    cut = _generate(lm, max_new_tokens=12, stop=(stop,))
    assert cut["details"]["finish_reason"] == "stop_sequence"
    assert cut["generated_text"] == full[: full.index(stop)]


def test_streaming_gives_the_same_text_token_by_token(lm: LoadedModel) -> None:
    whole = _generate(lm)["generated_text"]
    request = GenerateRequest(inputs=(PROMPTS[0],), adapters=(None,),
                              params=SamplingParams(max_new_tokens=8, ignore_eos=True), stream=True)
    import json

    lines = [json.loads(line) for line in b"".join(stream(lm, request)).decode().splitlines() if line.strip()]
    assert len(lines) == 8 and lines[-1]["generated_text"] == whole


def test_an_adapter_changes_the_answer_and_an_unknown_one_is_a_404(lm: LoadedModel) -> None:
    assert _generate(lm, "alpha")["generated_text"] != _generate(lm)["generated_text"]
    with pytest.raises(UnknownAdapter):
        _generate(lm, "nope")


def test_an_adapter_registered_at_run_time_answers_and_goes(lm: LoadedModel, model_dir: Path) -> None:
    spare = model_dir.parent / "spare" / "gamma"
    lm.registry.register("gamma", str(spare), pin=True)
    assert lm.registry.describe("gamma")["pinned"] is True
    if lm.engine_kind == "vllm":  # preloaded and pinned in vLLM itself
        assert "gamma" in lm.engine.loaded_adapters()
    answer = _generate(lm, "gamma")["generated_text"]
    assert answer != _generate(lm)["generated_text"] and answer != _generate(lm, "alpha")["generated_text"]
    lm.registry.unregister("gamma")
    with pytest.raises(UnknownAdapter):
        _generate(lm, "gamma")
    if lm.engine_kind == "vllm":
        assert "gamma" not in lm.engine.loaded_adapters()


def test_the_time_budget_ends_generation_with_time_limit(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_endpoint.handler.service as service

    monkeypatch.setattr(service, "deadline_for", lambda _lm: 0.0)  # already passed
    answer = _generate(lm, max_new_tokens=50)
    assert answer["details"]["finish_reason"] == "time_limit" and answer["details"]["generated_tokens"] < 50


def test_past_rows_and_queue_the_endpoint_answers_429(lm: LoadedModel) -> None:
    from lora_endpoint.handler.engine import engine_for
    from lora_endpoint.handler.generation import Row

    engine = engine_for(lm)
    ids = tuple(lm.tokenizer(PROMPTS[1]).input_ids)
    rows = [Row(ids, None, SamplingParams(max_new_tokens=200, ignore_eos=True))]
    handles, refused = [], 0
    released = threading.Semaphore(0)
    for _ in range(40):
        try:
            handles.append(engine.submit(rows, on_release=released.release))
        except ModelOverloaded as err:
            refused += 1
            assert err.status == 429 and err.retry_after == 1
    for handle in handles:
        handle.cancel()
    assert refused > 0 and handles
    # Every cancelled request leaves the engine (queued ones too), so the next caller finds room.
    assert all(released.acquire(timeout=30) for _ in handles)
    assert _generate(lm)["details"]["generated_tokens"] == 8


def test_engines_answer_alike_greedy(lm: LoadedModel, model_dir: Path) -> None:
    """In the vLLM tier: the transformers engine, in the same process, answers the same (greedy)."""
    if lm.engine_kind != "vllm":
        pytest.skip("compares vLLM with the transformers engine (make test-vllm)")
    reference = load_model(model_dir, HandlerSettings(engine="transformers"))
    try:
        for adapter in (None, "alpha"):
            assert _generate(lm, adapter, max_new_tokens=12)["generated_text"] == \
                _generate(reference, adapter, max_new_tokens=12)["generated_text"], adapter
    finally:
        if reference.engine is not None:
            reference.engine.stop()


def test_concurrent_requests_each_get_their_own_answer(lm: LoadedModel) -> None:
    expected = {a: _generate(lm, a)["generated_text"] for a in (None, "alpha")}
    got: list[tuple[str | None, str]] = []

    def call(adapter: str | None) -> None:
        import time

        for _ in range(100):  # a 429 says "retry in a moment", and a client does
            try:
                got.append((adapter, _generate(lm, adapter)["generated_text"]))
                return
            except ModelOverloaded:
                time.sleep(0.1)

    threads = [threading.Thread(target=call, args=(a,)) for a in (None, "alpha") * 2]  # within max_queue
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(got) == 4 and all(text == expected[a] for a, text in got)


def test_model_info_names_the_engine_and_why(lm: LoadedModel) -> None:
    from lora_endpoint.handler.info import render

    info = render(lm)
    assert info["engine"]["name"] == lm.engine_kind and info["engine"]["reason"].startswith("LORA_ENGINE=")


def test_a_request_record_has_the_engine_figures(lm: LoadedModel) -> None:
    from lora_endpoint.handler.telemetry import Trace

    trace = Trace("conformance")
    request = GenerateRequest(inputs=(PROMPTS[0],), adapters=("alpha",), params=SamplingParams(
        max_new_tokens=8, ignore_eos=True))
    trace.request(request)
    assert not isinstance(run(lm, [request], [trace])[0], HandlerError)
    record = lm.telemetry.request_record(trace, 200, None)
    assert record["GeneratedTokens"] == 8 and record["finish_reason"] == "length" and record["Adapter"] == "alpha"
    assert 0 <= record["QueueTime"] <= record["TimeToFirstToken"] <= record["EndToEndLatency"]
    assert record["InterTokenLatency"] > 0 and record["PromptTokens"] == len(lm.tokenizer(PROMPTS[0]).input_ids)
    import time

    deadline = time.monotonic() + 10  # the engine counts its rows at the end of the step that finished them
    while lm.telemetry.gauges(lm)["RunningRows"] and time.monotonic() < deadline:
        time.sleep(0.01)
    gauges = lm.telemetry.gauges(lm)
    assert gauges["RunningRows"] == 0 and gauges["QueueDepth"] == 0 and gauges["RegisteredAdapters"] >= 1
