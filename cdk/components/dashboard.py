"""The operations dashboard: the endpoint's and the API's AWS metrics, then the handler's own (``llm_metrics``)."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_cloudwatch as cw
from constructs import Construct

from cdk.components.llm_metrics import LlmMetrics
from cdk.components.observability import PERIOD, ApiAlarms, EndpointAlarms

PERCENT = cw.YAxisProps(label="%", min=0, max=100, show_units=False)


def graph(title: str, *left: cw.IMetric, right: Sequence[cw.IMetric] = (),
          right_axis: cw.YAxisProps | None = None) -> cw.GraphWidget:
    """One graph a third of the dashboard wide."""
    return cw.GraphWidget(title=title, left=list(left), right=list(right), right_y_axis=right_axis, width=8)


class OperationsDashboard(Construct):
    """One dashboard: traffic, errors, latency, instances, API, alarm states; with ``llm``, the handler's
    latencies, throughput, engine, errors by type and adapters."""

    def __init__(
        self, scope: Construct, construct_id: str, *, name: str, endpoint: EndpointAlarms, api: ApiAlarms,
        llm: LlmMetrics | None,
    ) -> None:
        super().__init__(scope, construct_id)
        ea, aa = endpoint.alarms, api.alarms
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=name)
        self.dashboard.add_widgets(
            graph("Invocations", endpoint.metrics["invocations"], api.metrics["count"]),
            graph("Endpoint error rates (%)", ea["error_5xx_rate"].metric, ea["error_4xx_rate"].metric),
            graph("Latency p90 (us)", endpoint.metrics["model_latency"], endpoint.metrics["overhead_latency"]),
        )
        host = [ea[key].metric for key in ("cpu", "memory", "disk") if key in ea]
        self.dashboard.add_widgets(
            # Serverless endpoints have no GPU (and no GPU metrics).
            *([graph("GPU", endpoint.metrics["gpu_utilization"], ea["gpu_memory"].metric)] if "gpu_memory" in ea
              else []),
            graph("CPU / memory / disk" if "cpu" in ea else "Memory / disk", *host),
            graph("Model setup time (us)", ea["model_setup_time"].metric),
        )
        alarms = [*ea.values(), *aa.values(), *(llm.alarms.values() if llm else ())]
        self.dashboard.add_widgets(
            graph("API errors", api.metrics["4xx"], api.metrics["5xx"]),
            graph("API latency p90 (ms)", aa["api_latency_p90"].metric),
            cw.AlarmStatusWidget(title="Alarms", alarms=alarms, width=8),
        )
        if llm is not None:
            self._llm_rows(llm)

    def _llm_rows(self, llm: LlmMetrics) -> None:
        m, q = llm.metrics, llm.insights
        self.dashboard.add_widgets(
            graph("Time to first token (ms)", m["ttft_p50"], m["ttft_p90"]),
            graph("Inter-token latency (ms)", m["itl_p50"], m["itl_p90"]),
            graph("Generation: tokens/s per container, tokens per 5 min", m["throughput"],
                  right=[m["generated_tokens"]]),
        )
        self.dashboard.add_widgets(
            graph("Engine: queue and running rows (max), batch and KV cache (%)", m["queue_depth"],
                  m["running_rows"], right=[m["batch_occupancy"], m["kv_cache"]], right_axis=PERCENT),
            cw.GraphWidget(title="Errors by type", left=[q["errors_by_type"]], width=8, period=PERIOD),
            cw.GraphWidget(title="Top adapters by requests", left=[q["top_adapters"]], width=8, period=PERIOD),
        )
        self.dashboard.add_widgets(
            graph("Adapters: loads and evictions, resident", m["adapter_loads"], m["adapter_evictions"],
                  right=[m["resident_adapters"]]),
            graph("Queue time / end-to-end latency p90 (ms)", m["queue_time_p90"], m["end_to_end_p90"]),
        )
