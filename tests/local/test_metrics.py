"""GET /metrics: the catalog's metrics in Prometheus' text format, moving with traffic; the local output defaults."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from lora_endpoint.contract.metrics import BY_NAME, CATALOG, ENGINE
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.local.app import create_app
from lora_endpoint.local.metrics import LOCAL_SETTINGS, PrometheusMetrics, with_local_settings
from lora_endpoint.local.package import ServedModel

from .conftest import Running, fake_served, spec_in_mode, start

Families = dict[str, Any]


def families(text: str) -> Families:
    return {family.name: family for family in text_string_to_metric_families(text)}


def scrape(url: str) -> Families:
    response = httpx.get(url + "/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    return families(response.text)


def value(found: Families, metric: str, sample: str, **labels: str) -> float:
    """The sample ``<prometheus name><sample>`` of catalog metric ``metric`` with ``labels`` (0 when absent)."""
    name = BY_NAME[metric].prometheus
    for s in found[name].samples if name in found else ():
        if s.name == name + sample and s.labels == labels:
            return float(s.value)
    return 0.0


def test_every_catalog_metric_is_served_under_its_prometheus_name_and_type(server: Running) -> None:
    found = scrape(server.url)
    assert httpx.get(server.url + "/openapi.json").json()["paths"]["/metrics"]["get"]["tags"] == ["local"]
    for metric in CATALOG:
        assert metric.prometheus in found, metric.name
        assert found[metric.prometheus].type == metric.prometheus_type, metric.name
    # the engine is read at scrape time: every gauge and counter has its one sample
    for metric in (m for m in CATALOG if m.kind == ENGINE):
        assert [s.labels for s in found[metric.prometheus].samples if not s.name.endswith("_created")] == [{}], \
            metric.name


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_request_counters_and_histograms_move_with_traffic(server: Running, adapter: str | None) -> None:
    label = adapter or "base"
    before = scrape(server.url)
    # GIVEN one generate request, for the base model or an adapter
    body: dict[str, Any] = {"inputs": "Hello there", "parameters": {"max_new_tokens": 3}}
    if adapter:
        body["adapters"] = adapter
    response = httpx.post(server.url + "/invocations", json=body, timeout=60)
    assert response.status_code == 200
    generated = response.json()["details"]["generated_tokens"]
    # WHEN Prometheus scrapes
    after = scrape(server.url)

    # THEN the request counted under its adapter, kind and status, with its tokens and latencies
    def delta(metric: str, sample: str, **labels: str) -> float:
        return value(after, metric, sample, **labels) - value(before, metric, sample, **labels)

    assert delta("Requests", "_total", adapter=label, kind="generate", status="200") == 1
    assert delta("PromptTokens", "_total", adapter=label) > 0
    assert delta("GeneratedTokens", "_total", adapter=label) == generated == 3
    for histogram in ("TimeToFirstToken", "EndToEndLatency", "QueueTime", "InterTokenLatency"):
        assert delta(histogram, "_count", adapter=label) == 1, histogram
        assert delta(histogram, "_bucket", adapter=label, le="+Inf") == 1, histogram
    assert 0 < delta("EndToEndLatency", "_sum", adapter=label) < 60  # seconds, not milliseconds
    assert value(after, "GenerationThroughput", "") >= 0


def test_an_unknown_adapter_counts_as_an_error_by_its_type(server: Running) -> None:
    before = scrape(server.url)
    response = httpx.post(server.url + "/invocations", json={"inputs": "Hello", "adapters": "nope"}, timeout=60)
    assert response.status_code == 404
    after = scrape(server.url)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, "_total", **labels) - value(before, metric, "_total", **labels)

    assert delta("Errors", error_type="unknown_adapter") == 1
    requests = BY_NAME["Requests"].prometheus
    assert sum(delta("Requests", **s.labels) for s in after[requests].samples
               if s.name == requests + "_total" and s.labels["status"] == "404") == 1


def test_metrics_answer_while_the_model_loads_and_count_from_the_first_request(tiny_model_dir: Path) -> None:
    from lora_endpoint.handler import entry

    # GIVEN the tiny model in sync mode (its init call on a worker thread), held in its init call
    gate = threading.Event()
    served = ServedModel.from_spec(spec_in_mode(tiny_model_dir, "sync"))
    inner = served.handle

    @functools.wraps(inner)  # keeps __module__: the telemetry functions are found next to handle
    def gated(inputs: Any) -> Any:
        if inputs.is_empty():
            gate.wait(30)
        return inner(inputs)

    served.handle = gated
    saved, entry._runtime = entry._runtime, entry._Runtime()
    running = start(create_app(served, batch_size=1), wait_ready=False)
    try:
        # WHEN it is scraped before the model is ready
        loading = scrape(running.url)
        # THEN every metric is described, and none has a sample yet
        assert httpx.get(running.url + "/ping").status_code == 503
        assert {m.prometheus for m in CATALOG} <= set(loading)
        assert all(not family.samples for family in loading.values())
        # WHEN the model is ready, the first request is counted
        gate.set()
        assert served.ready.wait(60)
        assert httpx.post(running.url + "/invocations", json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
                          timeout=60).status_code == 200
        ready = scrape(running.url)
        assert value(ready, "Requests", "_total", adapter="base", kind="generate", status="200") == 1
        assert value(ready, "RegisteredAdapters", "") == 2  # alpha and beta
    finally:
        gate.set()
        running.stop()
        entry._runtime = saved


def test_the_sink_takes_request_records_in_milliseconds_and_ignores_engine_records() -> None:
    # GIVEN a handler without telemetry functions (a foreign model.py)
    prometheus = PrometheusMetrics(fake_served(lambda inputs: None))
    assert prometheus.attach() is False
    # WHEN it is handed records
    prometheus.record({"event": "request", "kind": "chat", "status": 429, "Adapter": "other", "Requests": 1,
                       "PromptTokens": 7, "TimeToFirstToken": 250.0, "Errors": 1, "ErrorType": "model_overloaded"})
    prometheus.record({"event": "engine", "QueueDepth": 5, "AdapterLoads": 3})
    found = families(prometheus.exposition().decode())
    # THEN the request moved its series, in seconds; the engine metrics have no samples (no snapshot)
    assert value(found, "Requests", "_total", adapter="other", kind="chat", status="429") == 1
    assert value(found, "PromptTokens", "_total", adapter="other") == 7
    assert value(found, "TimeToFirstToken", "_sum", adapter="other") == 0.25
    assert value(found, "TimeToFirstToken", "_bucket", adapter="other", le="0.25") == 1
    assert value(found, "TimeToFirstToken", "_bucket", adapter="other", le="0.1") == 0
    assert value(found, "EndToEndLatency", "_count", adapter="other") == 0  # absent from the record
    assert value(found, "Errors", "_total", error_type="model_overloaded") == 1
    assert all(not found[m.prometheus].samples for m in CATALOG if m.kind == ENGINE)


def test_two_apps_have_registries_of_their_own() -> None:
    first, second = (PrometheusMetrics(fake_served(lambda inputs: None)) for _ in range(2))
    first.record({"event": "request", "status": 200, "Adapter": "base", "Requests": 1})
    assert value(families(first.exposition().decode()), "Requests", "_total", adapter="base", kind="unknown",
                 status="200") == 1
    assert value(families(second.exposition().decode()), "Requests", "_total", adapter="base", kind="unknown",
                 status="200") == 0


def test_local_output_defaults_yield_to_the_environment_and_the_package() -> None:
    # nothing set: plain records (no EMF) on stdout
    settings = HandlerSettings.from_options(with_local_settings({"model_dir": "/m"}, {}), env={})
    assert (settings.metrics, settings.telemetry_destination, settings.request_log) == ("off", "stdout", True)
    # the user's environment wins
    env = {"LORA_METRICS": "emf", "LORA_TELEMETRY_DESTINATION": "stderr"}
    assert with_local_settings({}, env) == {}
    settings = HandlerSettings.from_options(with_local_settings({}, env), env=env)
    assert (settings.metrics, settings.telemetry_destination) == ("emf", "stderr")
    # so does the package's option
    destination = LOCAL_SETTINGS["telemetry_destination"]
    assert with_local_settings({"metrics": "emf"}, {}) == {"metrics": "emf", "telemetry_destination": destination}


def test_serve_local_gives_the_init_call_the_local_output_defaults(tiny_model_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_endpoint.local.app as app_module
    from lora_endpoint.commands import serve as serve_local

    # GIVEN a server that never runs, and a user who set the destination but not LORA_METRICS
    seen: dict[str, str] = {}
    real = app_module.create_app

    def capture(served: ServedModel, **kwargs: Any) -> Any:
        seen.update(served.init_properties)
        return real(served, **kwargs)

    monkeypatch.setattr(app_module, "create_app", capture)
    monkeypatch.setattr(app_module.DrainingServer, "run", lambda self, sockets=None: None)
    monkeypatch.setattr(serve_local.signal, "signal", lambda *args: None)
    monkeypatch.delenv("LORA_METRICS", raising=False)
    monkeypatch.setenv("LORA_TELEMETRY_DESTINATION", "stderr")
    # WHEN the serve command starts
    assert serve_local.main([str(tiny_model_dir)]) == 0
    # THEN the init call turns EMF off and leaves the user's destination alone
    assert seen["metrics"] == "off" and "telemetry_destination" not in seen
