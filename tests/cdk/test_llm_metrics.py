"""Alarms on the handler's own (EMF) metrics: metric, dimensions, statistic, threshold, periods, missing data,
SNS actions; thresholds and namespace from context; none of them rolls a deployment back."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from cdk.components.llm_metrics import OVERLOADED
from lora_endpoint.contract import errors, metrics
from lora_endpoint.contract import settings as handler_config
from tests.cdk.conftest import only, resources, synth

ENDPOINT = [{"Name": "Endpoint", "Value": "lora-endpoint"}]


def _handler_alarms(template: Template) -> dict[str, dict]:
    """The LlmMetrics alarms' properties by key (logical id without the construct prefix and hash)."""
    return {logical_id[len("LlmMetrics"):-8]: alarm["Properties"]
            for logical_id, alarm in resources(template, "AWS::CloudWatch::Alarm").items()
            if logical_id.startswith("LlmMetrics")}


def test_three_alarms_on_the_handlers_metrics(default_template: Template) -> None:
    alarms = _handler_alarms(default_template)
    expected = {
        # key: (metric, extra dimensions, statistic, threshold, evaluation periods, datapoints to alarm)
        "TtftP90": ("TimeToFirstToken", [], "p90", 5000, 3, 2),
        "QueueDepth": ("QueueDepth", [], "Average", 32, 3, 3),
        "OverloadErrors": ("Errors", [{"Name": "ErrorType", "Value": "model_overloaded"}], "Sum", 10, 3, 2),
    }
    assert set(alarms) == set(expected)
    for key, (name, dims, statistic, threshold, periods, datapoints) in expected.items():
        alarm = alarms[key]
        assert (alarm["Namespace"], alarm["MetricName"]) == (metrics.DEFAULT_NAMESPACE, name), key
        assert alarm["Dimensions"] == ENDPOINT + dims, key
        assert alarm.get("ExtendedStatistic", alarm.get("Statistic")) == statistic, key
        assert alarm["Period"] == 300, key
        assert alarm["Threshold"] == threshold, key
        assert (alarm["EvaluationPeriods"], alarm["DatapointsToAlarm"]) == (periods, datapoints), key
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold", key
        # Request records come with traffic, engine records with a running container: a gap is no trouble.
        assert alarm["TreatMissingData"] == "notBreaching", key


def test_the_alarms_notify_the_alert_topic(default_template: Template) -> None:
    topic_ref = {"Ref": next(iter(resources(default_template, "AWS::SNS::Topic")))}
    for key, alarm in _handler_alarms(default_template).items():
        assert alarm["AlarmActions"] == [topic_ref], key
        assert alarm["OKActions"] == [topic_ref], key
        assert alarm["AlarmDescription"].startswith("lora-endpoint: "), key


def test_the_alarms_watch_what_the_handler_publishes(default_template: Template) -> None:
    # The overload alarm's ErrorType is the handler's own code for a full queue.
    assert errors.ModelOverloaded.code == OVERLOADED
    kinds = {"TimeToFirstToken": metrics.REQUEST, "QueueDepth": metrics.ENGINE, "Errors": metrics.ERROR}
    for alarm in _handler_alarms(default_template).values():
        entry = metrics.BY_NAME[alarm["MetricName"]]
        assert entry.kind == kinds[entry.name]
        # Request and engine metrics carry [Endpoint]; errors [Endpoint, ErrorType] (telemetry.emf).
        assert [d["Name"] for d in alarm["Dimensions"]] == (
            [metrics.DIM_ENDPOINT, metrics.DIM_ERROR_TYPE] if entry.kind == metrics.ERROR else [metrics.DIM_ENDPOINT])


def test_thresholds_namespace_and_endpoint_come_from_context() -> None:
    template = synth({"alarm_ttft_p90_ms": 1500, "alarm_queue_depth": 8, "alarm_overload_errors": 0,
                      "metrics_namespace": "Team/LLM", "endpoint_name": "chat"})
    alarms = _handler_alarms(template)
    assert {key: a["Threshold"] for key, a in alarms.items()} == {"TtftP90": 1500, "QueueDepth": 8,
                                                                  "OverloadErrors": 0}
    for key, alarm in alarms.items():
        assert alarm["Namespace"] == "Team/LLM", key
        assert alarm["Dimensions"][0] == {"Name": "Endpoint", "Value": "chat"}, key


@pytest.mark.parametrize("context", [{}, {"endpoint_mode": "inference_components"}], ids=["variant", "components"])
def test_no_handler_alarm_rolls_a_deployment_back(default_template: Template, context: dict) -> None:
    template = synth(context) if context else default_template
    text = json.dumps({k: r["Properties"].get("DeploymentConfig") for k, r in template.to_json()["Resources"].items()
                       if r["Type"] in ("AWS::SageMaker::Endpoint", "AWS::SageMaker::InferenceComponent")})
    assert "AutoRollbackConfiguration" in text
    assert "LlmMetrics" not in text


def test_with_the_handlers_metrics_off_there_are_no_alarms_on_them() -> None:
    template = synth({"handler": {"metrics": "off"}})
    assert _handler_alarms(template) == {}
    assert len(resources(template, "AWS::CloudWatch::Alarm")) == 11
    # The handler writes no metric records then: its environment says so.
    env = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]["Environment"]
    assert env[handler_config.ENV_METRICS] == "off"
