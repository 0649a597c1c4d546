"""The metrics the handler publishes, written once: names, units, kinds and meanings.

Three readers, one source: the handler writes them as CloudWatch Embedded Metric Format records
(``telemetry``), the local endpoint serves them on ``GET /metrics`` in Prometheus' text format under
``prometheus`` names, and the CDK app draws its dashboard and sets its alarms on the CloudWatch names.
Stdlib only: the CDK app imports this module.

Dimensions stay bounded, so an endpoint cannot create metrics without limit (CloudWatch bills each
metric, Prometheus keeps each series): ``Endpoint`` (one value per deployment), ``Adapter`` (the
adapters named in ``LORA_METRICS_ADAPTERS``, else the ``LORA_METRICS_TOP_ADAPTERS`` busiest; every
other adapter counts as ``other``, the base model as ``base``, a request that failed before its adapter
was known - an unknown one, a body that does not parse - as ``none``) and ``ErrorType`` (the error codes of
``errors``, a closed set).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

DEFAULT_NAMESPACE = "LoraEndpoint"
DIM_ENDPOINT = "Endpoint"
DIM_ADAPTER = "Adapter"
DIM_ERROR_TYPE = "ErrorType"
BASE_LABEL = "base"  # a request for the base model (no adapter)
OTHER_LABEL = "other"  # an adapter outside the bounded set
MIXED_LABEL = "mixed"  # one request whose rows name different adapters
NONE_LABEL = "none"  # a request that failed before its adapters were resolved (unparsable, unknown adapter)

# Request metrics: one value per request, with dimension sets [Endpoint] and [Endpoint, Adapter].
REQUEST = "request"
# Error metric: one per failed request, with dimension set [Endpoint, ErrorType].
ERROR = "error"
# Engine metrics: one value per interval (LORA_METRICS_INTERVAL_S), dimension set [Endpoint].
ENGINE = "engine"


@dataclass(frozen=True)
class Metric:
    """One metric: ``name`` in CloudWatch (EMF), ``prometheus`` with its ``prometheus_type`` locally."""

    name: str
    unit: str  # a CloudWatch unit
    kind: str  # REQUEST, ERROR or ENGINE
    prometheus: str
    prometheus_type: str  # histogram, counter or gauge
    description: str


CATALOG: tuple[Metric, ...] = (
    Metric("Requests", "Count", REQUEST, "lora_endpoint_requests", "counter",
           "Requests answered, successful or not (Sum per period: requests per period)."),
    Metric("PromptTokens", "Count", REQUEST, "lora_endpoint_prompt_tokens", "counter",
           "Prompt tokens of a request, over all its rows (after templates and RAG passages)."),
    Metric("GeneratedTokens", "Count", REQUEST, "lora_endpoint_generated_tokens", "counter",
           "Tokens generated for a request, over all its rows."),
    Metric("TimeToFirstToken", "Milliseconds", REQUEST, "lora_endpoint_time_to_first_token_seconds", "histogram",
           "From the request reaching the handler to its first generated token (queue + adapter load + prefill)."),
    Metric("InterTokenLatency", "Milliseconds", REQUEST, "lora_endpoint_inter_token_latency_seconds", "histogram",
           "Mean time between a request's generated tokens after the first."),
    Metric("EndToEndLatency", "Milliseconds", REQUEST, "lora_endpoint_end_to_end_latency_seconds", "histogram",
           "From the request reaching the handler to its last byte (streams: until the stream ends)."),
    Metric("QueueTime", "Milliseconds", REQUEST, "lora_endpoint_queue_time_seconds", "histogram",
           "From the request reaching the handler to the engine taking its rows in (adapter loads included; "
           "on vLLM, vLLM's own queue is not included)."),
    Metric("Errors", "Count", ERROR, "lora_endpoint_errors", "counter",
           "Failed requests, by error type (the error body's type: invalid_request, model_overloaded ...)."),
    Metric("QueueDepth", "Count", ENGINE, "lora_endpoint_queue_depth", "gauge",
           "Requests waiting for the engine to take them in."),
    Metric("RunningRows", "Count", ENGINE, "lora_endpoint_running_rows", "gauge",
           "Rows (sequences) in the running batch."),
    Metric("BatchOccupancy", "Percent", ENGINE, "lora_endpoint_batch_occupancy_percent", "gauge",
           "Running rows as a share of the batch's rows (LORA_MAX_BATCH_ROWS)."),
    Metric("KvCacheUsage", "Percent", ENGINE, "lora_endpoint_kv_cache_usage_percent", "gauge",
           "KV-cache tokens allocated to running rows as a share of the token budget (LORA_KV_CACHE_TOKENS)."),
    Metric("ResidentAdapters", "Count", ENGINE, "lora_endpoint_resident_adapters", "gauge",
           "Adapters loaded on the device now (at most LORA_MAX_LORAS)."),
    Metric("RegisteredAdapters", "Count", ENGINE, "lora_endpoint_registered_adapters", "gauge",
           "Adapters the endpoint serves (packaged, registered at run time and just-in-time)."),
    Metric("AdapterLoads", "Count", ENGINE, "lora_endpoint_adapter_loads", "counter",
           "Adapters moved onto the device (Sum per period)."),
    Metric("AdapterEvictions", "Count", ENGINE, "lora_endpoint_adapter_evictions", "counter",
           "Adapters moved off the device to make room (Sum per period)."),
    Metric("GenerationThroughput", "Count/Second", ENGINE, "lora_endpoint_generation_throughput", "gauge",
           "Tokens generated per second over the last interval, all requests together."),
)
BY_NAME = {m.name: m for m in CATALOG}


def of_kind(kind: str) -> list[Metric]:
    """The catalog's metrics of one kind, in catalog order."""
    return [m for m in CATALOG if m.kind == kind]


class AdapterLabels:
    """Maps adapter names to a bounded set of dimension values.

    With ``fixed`` names, only those keep their name. Otherwise the ``top`` busiest adapters of the last
    interval keep theirs; until an interval has ended, the first ``top`` adapters seen do. Everything
    else is ``other``; no adapter is ``base``. Thread-safe (requests end on many threads).
    """

    def __init__(self, *, fixed: Iterable[str] = (), top: int = 10) -> None:
        self._fixed = frozenset(fixed)
        self._top = max(0, top)
        self._named: set[str] = set()
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def label(self, adapters: Iterable[str | None]) -> str:
        """The label of a request whose rows use ``adapters`` (``mixed`` when they differ)."""
        names = set(adapters)
        if len(names) > 1:
            return MIXED_LABEL
        name = next(iter(names), None)
        if name is None:
            return BASE_LABEL
        if self._fixed:
            return name if name in self._fixed else OTHER_LABEL
        with self._lock:
            self._counts[name] += 1
            if name in self._named:
                return name
            if len(self._named) < self._top:
                self._named.add(name)
                return name
        return OTHER_LABEL

    def roll(self) -> None:
        """End an interval: its ``top`` busiest adapters keep their names for the next one."""
        if self._fixed:
            return
        with self._lock:
            self._named = {name for name, _ in self._counts.most_common(self._top)} if self._counts else self._named
            self._counts.clear()
