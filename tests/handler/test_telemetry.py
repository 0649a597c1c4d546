"""Request and engine records through the real DJL entry points: valid EMF with the catalog's names and
units, the fields operators read, bounded dimensions, and no prompt text unless asked for."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lora_endpoint.contract import metrics
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler import entry, logs, telemetry

SCHEMA = json.loads((Path(__file__).parent.parent / "fixtures" / "emf_schema.json").read_text())
MARKER = "zebra-quartz-7731"  # a prompt word that must never reach a log line


def _start(tiny_model_dir: Path, records: Path, **options: str) -> None:
    from djl_python.inputs import Input

    props = {"model_dir": str(tiny_model_dir), "max_new_tokens": "64", "telemetry_destination": str(records),
             "metrics_interval_s": "0", "metrics_endpoint": "ep-test", **options}
    assert asyncio.run(entry.handle(Input(props))) is None


@pytest.fixture
def served(djl, tiny_model_dir, tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    records = tmp_path / "records.jsonl"
    _start(tiny_model_dir, records)
    yield records
    model = entry._runtime.model
    if model is not None and model.engine is not None:
        model.engine.stop()


def call(body: Any, **headers: str) -> Any:
    from djl_python.inputs import request

    headers.setdefault("Content_Type", "application/json")

    async def answer() -> Any:  # a stream is read on the loop it was made on, as DJL's frontend does
        out = await entry.handle(request(body if isinstance(body, str) else json.dumps(body), **headers))
        if hasattr(out, "__aiter__"):
            async for _ in out:
                pass
        return out

    return asyncio.run(answer())


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_emf(record: dict[str, Any]) -> None:
    """The schema, then the rules it cannot say: every dimension names a root string, every metric a root
    number, and each metric is the catalog's, with the catalog's unit."""
    jsonschema.validate(record, SCHEMA)
    for directive in record["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for name in dimension_set:
                assert isinstance(record[name], str) and record[name], name
        for declared in directive["Metrics"]:
            value = record[declared["Name"]]
            assert isinstance(value, int | float) and not isinstance(value, bool), declared
            assert declared["Unit"] == metrics.BY_NAME[declared["Name"]].unit


GENERATE = {"inputs": "Hello", "adapters": "alpha", "parameters": {"max_new_tokens": 6, "do_sample": False}}


def test_every_record_is_emf_with_the_catalog_names_and_units(served: Path) -> None:
    # GIVEN an answer, a stream, a chat stream, two kinds of errors, and an engine record
    call(GENERATE, requestId="inv-1")  # DJL takes it from X-Amzn-SageMaker-Inference-Id
    call({**GENERATE, "stream": True})
    call({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "stream": True})
    call({"inputs": "Hi", "adapters": "nope"})
    call("{not json")
    engine = entry._runtime.model.telemetry.tick()  # type: ignore[union-attr]
    assert engine is not None
    # THEN every line is an EMF record
    records = lines(served)
    assert [r["event"] for r in records] == ["request"] * 5 + ["engine"]
    for record in records:
        check_emf(record)
        assert record["Endpoint"] == "ep-test"
        assert record["_aws"]["CloudWatchMetrics"][0]["Namespace"] == metrics.DEFAULT_NAMESPACE
    answer, stream, chat, unknown, broken, engine_line = records
    # AND the request figures are the request's
    assert answer["request_id"] == "inv-1" and answer["status"] == 200 and answer["Adapter"] == "alpha"
    assert answer["GeneratedTokens"] == 6 and answer["finish_reason"] == "length" and answer["kind"] == "generate"
    assert 0 < answer["TimeToFirstToken"] <= answer["EndToEndLatency"] and answer["InterTokenLatency"] > 0
    assert answer["QueueTime"] <= answer["TimeToFirstToken"] and answer["PromptTokens"] > 0
    assert stream["stream"] is True and stream["GeneratedTokens"] == 6 and stream["status"] == 200
    assert chat["kind"] == "chat" and chat["Adapter"] == metrics.BASE_LABEL
    # AND an error counts under its type, with no figure it does not have
    assert unknown["status"] == 404 and unknown["ErrorType"] == "unknown_adapter" and unknown["Errors"] == 1
    assert "TimeToFirstToken" not in unknown and broken["ErrorType"] == "invalid_request"
    assert unknown["Adapter"] == broken["Adapter"] == metrics.NONE_LABEL and unknown["adapters"] == []
    error_directives = [d for d in unknown["_aws"]["CloudWatchMetrics"] if ["Endpoint", "ErrorType"] in d["Dimensions"]]
    assert [m["Name"] for d in error_directives for m in d["Metrics"]] == ["Errors"]
    # AND the engine record has every engine metric
    assert {m.name for m in metrics.of_kind(metrics.ENGINE)} <= set(engine_line)
    assert engine_line["GenerationThroughput"] > 0 and engine_line["RunningRows"] == 0


def test_sync_mode_gives_each_item_of_a_batch_its_own_record(served: Path) -> None:
    from djl_python.inputs import batch, request

    good = request(json.dumps(GENERATE), Content_Type="application/json", requestId="a")
    bad = request(json.dumps({"inputs": "Hi", "adapters": "nope"}), Content_Type="application/json", requestId="b")
    entry.handle_sync(batch(good, bad))
    by_id = {r["request_id"]: r for r in lines(served)}
    assert by_id["a"]["status"] == 200 and by_id["a"]["GeneratedTokens"] == 6
    assert by_id["b"]["status"] == 404 and by_id["b"]["ErrorType"] == "unknown_adapter"


def test_a_prompt_never_reaches_a_log_line_by_default(served: Path, capfd, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.DEBUG)
    call({"inputs": f"Tell me about {MARKER}", "parameters": {"max_new_tokens": 3}})
    call({"messages": [{"role": "user", "content": MARKER}], "max_tokens": 3, "stream": True})
    call({"query": MARKER, "context": [f"{MARKER} is a word."], "parameters": {"max_new_tokens": 3}})
    call({"inputs": MARKER, "parameters": {"max_new_tokens": 0}})  # refused
    call({"inputs": MARKER, "adapters": "nope"})
    out, err = capfd.readouterr()
    logged = served.read_text() + out + err + caplog.text
    assert len(lines(served)) == 5 and MARKER not in logged


def test_prompts_are_logged_when_a_setting_asks(djl, tiny_model_dir, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    records = tmp_path / "records.jsonl"
    _start(tiny_model_dir, records, log_prompts="true", metrics="off")
    try:
        call({"inputs": f"Tell me about {MARKER}", "parameters": {"max_new_tokens": 3}})
        (record,) = lines(records)
        assert MARKER in record["prompt"] and "_aws" not in record  # metrics off: a plain record
    finally:
        entry._runtime.model.engine.stop()  # type: ignore[union-attr]


def test_records_go_nowhere_when_both_are_off(tmp_path: Path) -> None:
    settings = HandlerSettings(request_log=False, metrics="off", telemetry_destination=str(tmp_path / "x"))
    assert telemetry.writer_for(settings, under_model_server=True) is None


def test_auto_writes_to_this_process_stdout_outside_sagemaker(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import sys

    monkeypatch.setattr(telemetry, "in_sagemaker", lambda: False)
    assert telemetry._open("auto", under_model_server=True) is sys.stdout


def test_a_failing_sink_is_dropped_and_never_fails_a_request(served: Path) -> None:
    model = entry._runtime.model
    assert model is not None
    calls: list[int] = []

    def broken(record: dict[str, Any]) -> None:
        calls.append(1)
        raise RuntimeError("sink down")

    model.telemetry.add_sink(broken)
    call(GENERATE)
    call(GENERATE)
    assert calls == [1] and len(lines(served)) == 2  # dropped after its first failure; the writer goes on


def test_adapter_labels_stay_bounded() -> None:
    labels = metrics.AdapterLabels(top=2)
    assert [labels.label([a]) for a in ("a", "b", "c", "a", None)] == ["a", "b", "other", "a", "base"]
    assert labels.label(["a", "b"]) == "mixed"
    for _ in range(3):
        labels.label(["c"])
    labels.roll()  # the last interval's busiest keep their names: c (3 + 1), then a (2)
    assert [labels.label([a]) for a in ("c", "a", "b")] == ["c", "a", "other"]
    fixed = metrics.AdapterLabels(fixed=["b"], top=5)
    assert [fixed.label([a]) for a in ("a", "b")] == ["other", "b"]


def test_log_lines_are_json_with_the_exception_in_one_line() -> None:
    stream = io.StringIO()
    logs.configure(HandlerSettings(), stream)
    try:
        log = logging.getLogger("lora_endpoint.handler")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("request %s failed", "r-1")
        (line,) = stream.getvalue().splitlines()
        body = json.loads(line)
        assert body["level"] == "ERROR" and body["message"] == "request r-1 failed"
        assert "ValueError: boom" in body["exception"] and body["logger"] == "lora_endpoint.handler"
    finally:
        logs.configure(HandlerSettings(log_format="text"))


def test_settings_refuse_what_cloudwatch_would(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from lora_endpoint.contract.settings import SettingsError

    for bad in ({"LORA_METRICS": "statsd"}, {"LORA_METRICS_NAMESPACE": "AWS/SageMaker"}, {"LORA_LOG_FORMAT": "xml"}):
        with pytest.raises(SettingsError, match=next(iter(bad))):
            HandlerSettings.from_env(bad)


def test_the_engine_record_timer_ends_with_its_model() -> None:
    import gc

    class Model:  # what the engine record reads of a LoadedModel, with no engine running
        def __init__(self, settings: HandlerSettings) -> None:
            self.engine, self.registry, self.settings, self.resident, self.adapters = None, None, settings, (), {}

    settings = HandlerSettings(metrics_interval_s=0.01)
    hub = telemetry.Telemetry(settings)
    got: list[dict[str, Any]] = []
    hub.add_sink(got.append)
    lm = Model(settings)
    hub.watch(lm)
    assert hub._thread is not None
    while not got:
        hub._thread.join(0.01)
    assert got[0]["event"] == "engine" and got[0]["QueueDepth"] == 0
    del lm
    gc.collect()
    hub._thread.join(5)
    assert not hub._thread.is_alive()  # the timer held the model only weakly, and stopped


def test_metrics_without_request_logs_keep_only_the_figures(tmp_path: Path) -> None:
    stream = io.StringIO()
    writer = telemetry.RecordWriter(stream, namespace="ns", with_emf=True, requests=False)
    writer({"event": "request", "request_id": "r-1", "adapters": ["alpha"], "status": 404, "Endpoint": "e",
            "Adapter": "none", "ErrorType": "unknown_adapter", "Requests": 1, "Errors": 1, "EndToEndLatency": 2.0})
    record = json.loads(stream.getvalue())
    check_emf(record)
    assert set(record) == {"_aws", "event", "Endpoint", "Adapter", "ErrorType", "Requests", "Errors",
                           "EndToEndLatency"}


def test_a_destination_that_cannot_be_written_is_a_settings_error(tmp_path: Path) -> None:
    from lora_endpoint.contract.settings import SettingsError

    settings = HandlerSettings(telemetry_destination=str(tmp_path / "missing" / "records.jsonl"))
    with pytest.raises(SettingsError, match="LORA_TELEMETRY_DESTINATION: cannot write to"):
        telemetry.writer_for(settings, under_model_server=True)
