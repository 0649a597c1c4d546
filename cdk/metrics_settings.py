"""Alarm thresholds and the handler's metrics as the stack sees them: namespace, dimension, what it owns.

The handler publishes its metrics as CloudWatch Embedded Metric Format records in its log lines
(``lora_endpoint.contract.metrics`` is the catalog, ``lora_endpoint.handler.telemetry.emf`` the writer). The
stack owns two of its
settings, so the dashboard and alarms look where the metrics are: the ``Endpoint`` dimension is the
endpoint's name and the namespace is ``metrics_namespace``. Setting either in the ``handler`` context
as well is refused (one owner per setting), not silently overridden.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdk.errors import in_range
from cdk.errors import require as _require
from lora_endpoint.contract import settings as handler_config

# CloudWatch's namespace characters (PutMetricData: 1-255, not starting with ":"), without spaces or quotes so
# the dashboard's Metrics Insights queries can quote it; AWS/ is reserved for AWS services.
METRICS_NAMESPACE = re.compile(r"^[A-Za-z0-9._/#-][A-Za-z0-9._/#:-]{0,254}$")
ALARM_PERIOD_S = 300
"""The period of every alarm and dashboard graph: 5 minutes."""

STACK_OWNED = {
    "metrics_endpoint": "the Endpoint dimension is the endpoint's name (endpoint_name), which the dashboard and "
                        "alarms look up",
    "metrics_namespace": "use the context key metrics_namespace, which the dashboard and alarms read as well",
}
"""Handler settings (``HandlerSettings`` field names) the stack sets itself, and why."""


def check_namespace(namespace: str) -> None:
    """``ContextError`` on ``metrics_namespace`` unless CloudWatch (and a quoted query) can take it."""
    _require(
        METRICS_NAMESPACE.match(namespace) is not None and not namespace.startswith("AWS/"),
        "metrics_namespace",
        "must be 1-255 letters, digits and . _ - / # : (not starting with ':', no spaces, not AWS/...), "
        f"got {namespace!r}",
    )


def check_handler_setting(name: str) -> None:
    """Refuse a ``handler`` context setting the stack owns."""
    _require(name not in STACK_OWNED, "handler", f"{name!r} is set by the stack: {STACK_OWNED.get(name)}")


@dataclass(frozen=True)
class AlarmSettings:
    """Alarm thresholds; percentages are per instance, per GPU or of invocations."""

    email: str = ""
    error_5xx_rate_pct: float = 1.0
    error_4xx_rate_pct: float = 10.0
    model_latency_p90_ms: float = 20_000.0
    overhead_latency_p90_ms: float = 500.0
    model_setup_time_s: float = 900.0
    gpu_memory_pct: float = 95.0
    disk_pct: float = 85.0
    cpu_pct: float = 90.0
    memory_pct: float = 90.0
    api_5xx_rate_pct: float = 1.0
    api_latency_p90_ms: float = 25_000.0
    ttft_p90_ms: float = 5_000.0
    """The handler's TimeToFirstToken p90 (queue + adapter load + prefill), in ms."""
    queue_depth: float = 32.0
    """The handler's QueueDepth, averaged over its containers, for 15 minutes (one full batch by default)."""
    overload_errors: float = 10.0
    """``model_overloaded`` (429) answers per 5 minutes."""

    def __post_init__(self) -> None:
        _require(self.email == "" or "@" in self.email, "alarm_email", f"not an address: {self.email!r}")
        for key in ("error_5xx_rate_pct", "error_4xx_rate_pct", "gpu_memory_pct", "disk_pct", "cpu_pct",
                    "memory_pct", "api_5xx_rate_pct"):
            in_range(f"alarm_{key}", getattr(self, key), 0.01, 100)
        for key in ("model_latency_p90_ms", "overhead_latency_p90_ms", "model_setup_time_s", "api_latency_p90_ms",
                    "ttft_p90_ms", "queue_depth"):
            _require(getattr(self, key) > 0, f"alarm_{key}", "must be positive")
        _require(self.overload_errors >= 0, "alarm_overload_errors",
                 f"must be 0 (alarm on any) or more, got {self.overload_errors:g}")


def check_alarms_can_fire(alarms: AlarmSettings, handler: handler_config.HandlerSettings) -> None:
    """Refuse thresholds the handler's metrics can never reach, or records too sparse for the alarm periods."""
    if handler.metrics == "off":
        return
    _require(
        alarms.queue_depth < handler.max_queue,
        "alarm_queue_depth",
        f"must be below the handler's max_queue ({handler.max_queue}): the queue never holds more, so the alarm "
        f"could not fire, got {alarms.queue_depth:g}",
    )
    _require(
        handler.metrics_interval_s <= ALARM_PERIOD_S / 2,
        "handler",
        f"metrics_interval_s ({handler.metrics_interval_s:g}) must be at most {ALARM_PERIOD_S // 2} s (0: no engine "
        f"record), so every {ALARM_PERIOD_S} s alarm period holds an engine record",
    )
