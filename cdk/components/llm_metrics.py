"""Alarms on the handler's own metrics, and the metrics and queries the dashboard draws from them.

The handler writes its metrics as CloudWatch Embedded Metric Format records in its log lines
(``lora_endpoint.contract.metrics`` is the catalog): CloudWatch Logs turns them into metrics in ``metrics_namespace``
with the dimension ``Endpoint`` = the endpoint's name, which the stack sets in the container's environment
in every endpoint mode. Every container (instances, copies) writes the same ``Endpoint`` value, so
CloudWatch aggregates them: percentiles are over all requests, Sums add up, an Average of an engine gauge
is the mean over the containers' records.

Alarms, at the stack's 5-minute period:
- ``TimeToFirstToken`` p90 [Endpoint] above ``alarm_ttft_p90_ms`` in 2 of 3 periods;
- ``QueueDepth`` Average [Endpoint] above ``alarm_queue_depth`` in 3 of 3 periods (15 minutes sustained);
- ``Errors`` Sum [Endpoint, ErrorType=model_overloaded] above ``alarm_overload_errors`` in 2 of 3 periods.

Treat-missing-data, on purpose:
- request records (TTFT, errors) exist only when requests end: a gap means no requests, or no overload,
  not trouble: ``NOT_BREACHING``, as for the endpoint's request metrics;
- engine records (QueueDepth) are periodic: every container writes one each ``metrics_interval_s`` while it
  runs, traffic or not. A gap is therefore not "quiet" but "no container reporting": before the first
  record after a start, at scale to zero, while copies are replaced, or with the handler's metrics off.
  None of these is a queue building up, and a missing container is the 5XX, ModelSetupTime and
  NoCapacity alarms' business. ``NOT_BREACHING``, unlike the instance metrics' ``IGNORE``: an alarm raised
  just before the last copy went away (scale in, scale to zero) would otherwise stay in ALARM with nothing
  left to report; and since all 3 periods must breach, a gap ends a streak rather than raising the alarm.

None of these is a rollback alarm: they measure load more than the release, so a traffic spike during the
bake would roll back a good model, and during blue/green the old fleet's idle engine records carry the
same ``Endpoint`` value as the new fleet's. A slower or failing model is what ModelLatency p90 and the 5XX
rate (``EndpointAlarms.rollback_alarms``) catch.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_sns as sns
from constructs import Construct

from cdk.components.observability import NOT_BREACHING, PERIOD, AlarmSpec, metric, topic_alarm
from cdk.settings import AlarmSettings
from lora_endpoint.contract import metrics as catalog
from lora_endpoint.contract.errors import ModelOverloaded

OVERLOADED = ModelOverloaded.code
"""The error type of a 429 from the handler: the engine's queue is full."""


class LlmMetrics(Construct):
    """The handler's metrics of one endpoint (``metrics``, ``insights``) and the alarms on them (``alarms``)."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: AlarmSettings, namespace: str, endpoint_name: str,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        self.namespace, self.endpoint_name = namespace, endpoint_name
        m = self._metric
        self.metrics: dict[str, cw.IMetric] = {
            "ttft_p50": m("TimeToFirstToken", "p50"),
            "ttft_p90": m("TimeToFirstToken", "p90"),
            "itl_p50": m("InterTokenLatency", "p50"),
            "itl_p90": m("InterTokenLatency", "p90"),
            "queue_time_p90": m("QueueTime", "p90"),
            "end_to_end_p90": m("EndToEndLatency", "p90"),
            "generated_tokens": m("GeneratedTokens", "Sum"),
            "throughput": m("GenerationThroughput", "Average"),
            "queue_depth": m("QueueDepth", "Maximum"),
            "running_rows": m("RunningRows", "Maximum"),
            "batch_occupancy": m("BatchOccupancy", "Average"),
            "kv_cache": m("KvCacheUsage", "Maximum"),
            "adapter_loads": m("AdapterLoads", "Sum"),
            "adapter_evictions": m("AdapterEvictions", "Sum"),
            "resident_adapters": m("ResidentAdapters", "Maximum"),
        }
        # Grouped by a dimension whose values the handler bounds (error codes, named adapters).
        self.insights: dict[str, cw.IMetric] = {
            "errors_by_type": self._insights("Errors", catalog.DIM_ERROR_TYPE, limit=20),
            "top_adapters": self._insights("Requests", catalog.DIM_ADAPTER, limit=10),
        }
        specs = [
            AlarmSpec("ttft_p90", f"TimeToFirstToken p90 above {settings.ttft_p90_ms:g} ms",
                      m("TimeToFirstToken", "p90", label=False), settings.ttft_p90_ms, NOT_BREACHING),
            AlarmSpec("queue_depth", f"QueueDepth above {settings.queue_depth:g} (mean over containers) for 15 "
                      "minutes", m("QueueDepth", "Average", label=False), settings.queue_depth, NOT_BREACHING,
                      periods=3, datapoints=3),
            AlarmSpec("overload_errors", f"more than {settings.overload_errors:g} {OVERLOADED} (429) answers per "
                      "5 minutes", m("Errors", "Sum", {catalog.DIM_ERROR_TYPE: OVERLOADED}, label=False),
                      settings.overload_errors, NOT_BREACHING),
        ]
        self.alarms = {spec.key: topic_alarm(self, spec, topic, endpoint_name) for spec in specs}

    def _metric(self, name: str, statistic: str, dims: Mapping[str, str] | None = None, *,
                label: bool = True) -> cw.Metric:
        """A catalog metric of this endpoint (a name the catalog lacks fails synth); labelled for graphs."""
        entry = catalog.BY_NAME[name]
        found = metric(self.namespace, entry.name, {catalog.DIM_ENDPOINT: self.endpoint_name, **(dims or {})},
                       statistic)
        if not label:
            return found
        return found.with_(label=f"{entry.name} {statistic}" if statistic.startswith("p") else entry.name)

    def _insights(self, name: str, group_by: str, *, limit: int) -> cw.MathExpression:
        """A Metrics Insights query: ``name`` summed per ``group_by`` value, the largest ``limit`` first."""
        schema = ", ".join(sorted((catalog.DIM_ENDPOINT, group_by)))
        query = (f'SELECT SUM({catalog.BY_NAME[name].name}) FROM SCHEMA("{self.namespace}", {schema}) '
                 f"WHERE {catalog.DIM_ENDPOINT} = '{self.endpoint_name}' GROUP BY {group_by} "
                 f"ORDER BY SUM() DESC LIMIT {limit}")
        # ${LABEL}: each series keeps its default label, the group's value (a fixed label would name them all alike).
        return cw.MathExpression(expression=query, using_metrics={}, label="${LABEL}", period=PERIOD)
