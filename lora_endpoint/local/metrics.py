"""``GET /metrics``: the handler's metrics (``lora_endpoint.contract.metrics.CATALOG``) in Prometheus' text format.

Every catalog metric keeps its ``prometheus`` name and ``prometheus_type``; nothing here spells a name.
Request metrics come from the handler's request records: ``PrometheusMetrics.record`` is a telemetry
sink, added through the served handler's ``add_telemetry_sink`` once the model is ready, so counters and
histograms move with traffic. Latencies are histograms in seconds (the records carry milliseconds).
Labels stay bounded: ``adapter`` (the record's ``Adapter`` label: an adapter's name, ``base``, ``other``, ``none``
or ``mixed``; see ``lora_endpoint.contract.metrics.AdapterLabels``); on the request counter also ``kind`` and
``status`` (the HTTP status the handler answered); on the error counter ``error_type`` only (the error
body's type, a closed set).

Engine gauges and the adapter load / eviction counters are read when Prometheus scrapes, from the
handler's ``telemetry_snapshot`` (no timer thread here); ``GenerationThroughput`` is the tokens
generated per second since the previous scrape. Before the model is ready, and behind a foreign
``model.py`` (which has neither function), every metric is still described: only what is known has
samples. Each app has its own ``CollectorRegistry``, not prometheus_client's global one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric as Family

from lora_endpoint.contract import metrics as catalog
from lora_endpoint.contract.settings import env_var
from lora_endpoint.handler.telemetry import REQUEST_EVENT

from .package import ServedModel

log = logging.getLogger("lora_endpoint.local")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# 1 ms .. 5 min: from the gaps between tokens (milliseconds) to a long generation's end-to-end latency.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                     120.0, 300.0)
SCALE = {"Milliseconds": 0.001}  # a catalog unit -> Prometheus' base unit (seconds); others count as they are

ADAPTER, KIND, STATUS, ERROR_TYPE = "adapter", "kind", "status", "error_type"
UNKNOWN_KIND = "unknown"  # a request whose body could not be parsed into a kind
REQUESTS = catalog.BY_NAME["Requests"]
THROUGHPUT = catalog.BY_NAME["GenerationThroughput"]
# Engine counters by their key in telemetry_snapshot()["counters"] (cumulative since the model loaded).
SNAPSHOT_COUNTERS = {"AdapterLoads": "loads", "AdapterEvictions": "evictions"}
SNAPSHOT_TOKENS = "tokens"

# The handler's output on the local endpoint (HandlerSettings fields), unless the package or the environment
# sets it: plain request records on stdout, without the CloudWatch EMF metadata only CloudWatch Logs reads.
LOCAL_SETTINGS = {"metrics": "off", "telemetry_destination": "stdout"}


def with_local_settings(properties: Mapping[str, str], environ: Mapping[str, str]) -> dict[str, str]:
    """The init call's ``properties`` plus ``LOCAL_SETTINGS`` where neither they (the package's options) nor
    ``environ`` (the setting's ``LORA_*`` variable) set the setting. ``HandlerSettings.from_options`` reads
    these properties over the environment, so a default is added only where the user set nothing."""
    given = {key.lower() for key in properties}
    return {**properties, **{name: value for name, value in LOCAL_SETTINGS.items()
                             if name not in given and env_var(name) not in environ}}


def _labels(metric: catalog.Metric) -> tuple[str, ...]:
    if metric.kind == catalog.ERROR:
        return (ERROR_TYPE,)
    return (ADAPTER, KIND, STATUS) if metric is REQUESTS else (ADAPTER,)


def _number(value: Any) -> float | None:
    """A metric value of a record: a number of 0 or more (counters cannot go down), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None


class PrometheusMetrics:
    """One app's metrics: its registry, the request sink, and the engine read at scrape time."""

    def __init__(self, served: ServedModel) -> None:
        self.served = served
        self.registry = CollectorRegistry()
        self._series: list[tuple[catalog.Metric, tuple[str, ...], Counter | Histogram]] = []
        for metric in catalog.of_kind(catalog.REQUEST) + catalog.of_kind(catalog.ERROR):
            labels = _labels(metric)
            series: Counter | Histogram
            if metric.prometheus_type == "histogram":
                series = Histogram(metric.prometheus, metric.description, labels, registry=self.registry,
                                   buckets=LATENCY_BUCKETS_S)
            else:
                series = Counter(metric.prometheus, metric.description, labels, registry=self.registry)
            self._series.append((metric, labels, series))
        self.engine = EngineCollector(served)
        self.registry.register(self.engine)

    def attach(self) -> bool:
        """Add the sink to the served handler (call once its model is ready); False behind a handler
        without ``add_telemetry_sink`` (a foreign ``model.py``): then only what it has is served."""
        add = self.served.handler_function("add_telemetry_sink")
        attached = bool(add(self.record)) if add is not None else False
        if attached:
            self.engine.start_interval()
        else:
            log.info("the served handler has no telemetry sink: /metrics has no request metrics")
        return attached

    def record(self, record: Mapping[str, Any]) -> None:
        """The telemetry sink, on the request's thread: one request record moves the request metrics
        (engine records are ignored: the engine is read at scrape time). prometheus_client's metrics
        are thread-safe."""
        if record.get("event") != REQUEST_EVENT:
            return
        values = {ADAPTER: str(record.get(catalog.DIM_ADAPTER) or catalog.BASE_LABEL),
                  KIND: str(record.get("kind") or UNKNOWN_KIND), STATUS: str(record.get("status", "")),
                  ERROR_TYPE: str(record.get(catalog.DIM_ERROR_TYPE) or "")}
        for metric, labels, series in self._series:
            value = _number(record.get(metric.name))
            if value is None:  # absent: no first token after an error, no error on a success ...
                continue
            child = series.labels(*(values[name] for name in labels))
            if isinstance(child, Histogram):
                child.observe(value * SCALE.get(metric.unit, 1.0))
            else:
                child.inc(value)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class EngineCollector:
    """The catalog's engine metrics, read from the served handler's ``telemetry_snapshot`` per scrape."""

    def __init__(self, served: ServedModel) -> None:
        self._served = served
        self._lock = threading.Lock()
        self._last: tuple[float, float] | None = None  # (monotonic time, tokens) of the previous scrape

    def describe(self) -> list[Family]:
        return list(self._families(None))

    def collect(self) -> Iterator[Family]:
        return self._families(self._snapshot())

    def start_interval(self) -> None:
        """The first scrape's throughput counts from now (the model is ready)."""
        snapshot = self._snapshot()
        tokens = _number((snapshot or {}).get("counters", {}).get(SNAPSHOT_TOKENS))
        if tokens is not None:
            with self._lock:
                self._last = (time.monotonic(), tokens)

    def _snapshot(self) -> dict[str, Any] | None:
        snapshot = self._served.handler_function("telemetry_snapshot")
        try:
            result = snapshot() if snapshot is not None else None
        except Exception:  # a scrape shows what it can; the handler's failure goes to the log
            log.exception("telemetry_snapshot failed")
            return None
        return result if isinstance(result, dict) else None

    def _families(self, snapshot: dict[str, Any] | None) -> Iterator[Family]:
        gauges = (snapshot or {}).get("gauges", {})
        counters = (snapshot or {}).get("counters", {})
        for metric in catalog.of_kind(catalog.ENGINE):
            if metric is THROUGHPUT:
                value = self._throughput(_number(counters.get(SNAPSHOT_TOKENS)))
            elif metric.name in SNAPSHOT_COUNTERS:
                value = _number(counters.get(SNAPSHOT_COUNTERS[metric.name]))
            else:
                value = _number(gauges.get(metric.name))
            family: Family
            if metric.prometheus_type == "counter":
                family = CounterMetricFamily(metric.prometheus, metric.description)
            else:
                family = GaugeMetricFamily(metric.prometheus, metric.description)
            if value is not None:
                family.add_metric([], value)
            yield family

    def _throughput(self, tokens: float | None) -> float | None:
        """Tokens per second since the previous scrape (or since the model became ready)."""
        if tokens is None:
            return None
        now = time.monotonic()
        with self._lock:
            last, self._last = self._last, (now, tokens)
        if last is None or now <= last[0]:
            return None
        return round(max(tokens - last[1], 0.0) / (now - last[0]), 3)
