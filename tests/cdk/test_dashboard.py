"""The operations dashboard: the AWS metrics' rows, the handler's metrics' rows (namespace, names, Metrics
Insights queries) and the alarm states."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.cdk.conftest import only, synth

HANDLER_METRICS = ("TimeToFirstToken", "InterTokenLatency", "GenerationThroughput", "GeneratedTokens", "QueueDepth",
                   "RunningRows", "BatchOccupancy", "KvCacheUsage", "AdapterLoads", "AdapterEvictions",
                   "ResidentAdapters", "QueueTime", "EndToEndLatency")


def _widgets(template: Template) -> list[dict[str, Any]]:
    """The dashboard's widgets, with every CloudFormation reference in the body written as its JSON."""
    parts = only(template, "AWS::CloudWatch::Dashboard")["DashboardBody"]["Fn::Join"][1]
    body = "".join(part if isinstance(part, str) else json.dumps(part).replace('"', "'") for part in parts)
    return json.loads(body)["widgets"]


def _by_title(template: Template) -> dict[str, dict[str, Any]]:
    return {w["properties"]["title"]: w["properties"] for w in _widgets(template)}


def _series(widget: dict[str, Any]) -> list[str]:
    """Metric names (plain metrics) and expressions (math / Metrics Insights) a graph draws."""
    return [row[1] if isinstance(row[0], str) else row[0]["expression"] for row in widget["metrics"]]


def test_dashboard_shows_the_aws_metrics(default_template: Template) -> None:
    body = str(only(default_template, "AWS::CloudWatch::Dashboard")["DashboardBody"])
    for metric in ("Invocations", "ModelLatency", "OverheadLatency", "GPUUtilization", "GPUMemoryUtilization",
                   "CPUUtilization", "MemoryUtilization", "DiskUtilization", "ModelSetupTime", "5XXError", "Latency"):
        assert metric in body, metric


def test_handler_rows_draw_the_handlers_metrics_in_its_namespace(default_template: Template) -> None:
    graphs = _by_title(default_template)
    plain = [row for w in graphs.values() if "metrics" in w for row in w["metrics"] if isinstance(row[0], str)]
    drawn = {row[1] for row in plain if row[0] == "LoraEndpoint"}
    assert drawn == set(HANDLER_METRICS)
    # Every handler metric is this endpoint's.
    assert all(row[2:4] == ["Endpoint", "lora-endpoint"] for row in plain if row[0] == "LoraEndpoint")
    assert _series(graphs["Time to first token (ms)"]) == ["TimeToFirstToken", "TimeToFirstToken"]
    assert [row[-1]["stat"] for row in graphs["Time to first token (ms)"]["metrics"]] == ["p50", "p90"]
    assert [row[-1]["stat"] for row in graphs["Inter-token latency (ms)"]["metrics"]] == ["p50", "p90"]
    engine = graphs["Engine: queue and running rows (max), batch and KV cache (%)"]
    assert _series(engine) == ["QueueDepth", "RunningRows", "BatchOccupancy", "KvCacheUsage"]
    assert engine["metrics"][0][-1]["stat"] == "Maximum"
    assert [row[-1].get("yAxis") for row in engine["metrics"]] == [None, None, "right", "right"]


def test_errors_by_type_and_top_adapters_are_metrics_insights_queries(default_template: Template) -> None:
    graphs = _by_title(default_template)
    (errors,) = _series(graphs["Errors by type"])
    assert errors == ('SELECT SUM(Errors) FROM SCHEMA("LoraEndpoint", Endpoint, ErrorType) '
                      "WHERE Endpoint = 'lora-endpoint' GROUP BY ErrorType ORDER BY SUM() DESC LIMIT 20")
    (top,) = _series(graphs["Top adapters by requests"])
    assert top == ('SELECT SUM(Requests) FROM SCHEMA("LoraEndpoint", Adapter, Endpoint) '
                   "WHERE Endpoint = 'lora-endpoint' GROUP BY Adapter ORDER BY SUM() DESC LIMIT 10")
    for title in ("Errors by type", "Top adapters by requests"):
        assert graphs[title]["period"] == 300
        # One series per group, each under its own name.
        assert graphs[title]["metrics"][0][0]["label"] == "${LABEL}"


def test_queries_follow_the_namespace_and_endpoint() -> None:
    graphs = _by_title(synth({"metrics_namespace": "Team/LLM", "endpoint_name": "chat"}))
    (top,) = _series(graphs["Top adapters by requests"])
    assert 'FROM SCHEMA("Team/LLM", Adapter, Endpoint) WHERE Endpoint = \'chat\'' in top
    namespaces = {row[0] for w in graphs.values() for row in w.get("metrics", []) if isinstance(row[0], str)}
    assert "Team/LLM" in namespaces and "LoraEndpoint" not in namespaces


@pytest.mark.parametrize("key", ["LlmMetricsTtftP90", "LlmMetricsQueueDepth", "LlmMetricsOverloadErrors",
                                 "EndpointAlarmsError5XxRate", "ApiAlarmsApi5XxRate"])
def test_alarm_states_include_the_handlers_alarms(default_template: Template, key: str) -> None:
    (states,) = [w for w in _widgets(default_template) if w["type"] == "alarm"]
    assert any(f"'{key}" in arn for arn in states["properties"]["alarms"]), key


def test_no_handler_rows_with_the_handlers_metrics_off() -> None:
    titles = set(_by_title(synth({"handler": {"metrics": "off"}})))
    assert "Invocations" in titles
    assert not titles & {"Time to first token (ms)", "Errors by type", "Top adapters by requests"}
