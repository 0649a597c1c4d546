"""Alarms on AWS metrics (metric, dimensions, threshold, missing-data policy), the alert topic and outputs."""

from __future__ import annotations

import json

from aws_cdk.assertions import Template

from tests.cdk.conftest import only, resources, synth

DIMS = [{"Name": "EndpointName", "Value": "lora-endpoint"}, {"Name": "VariantName", "Value": "AllTraffic"}]


def _alarms(template: Template) -> dict[str, dict]:
    """Alarm properties by the key the component gave them (logical id without the hash)."""
    out = {}
    for logical_id, alarm in resources(template, "AWS::CloudWatch::Alarm").items():
        out[logical_id[:-8]] = alarm["Properties"]
    return out


def test_single_metric_alarms(default_template: Template) -> None:
    alarms = _alarms(default_template)
    expected = {
        "EndpointAlarmsModelLatencyP90": ("AWS/SageMaker", "ModelLatency", 20_000_000, "notBreaching"),
        "EndpointAlarmsOverheadLatencyP90": ("AWS/SageMaker", "OverheadLatency", 500_000, "notBreaching"),
        "EndpointAlarmsModelSetupTime": ("AWS/SageMaker", "ModelSetupTime", 900_000_000, "notBreaching"),
        "EndpointAlarmsGpuMemory": ("/aws/sagemaker/Endpoints", "GPUMemoryUtilization", 95, "ignore"),
        "EndpointAlarmsDisk": ("/aws/sagemaker/Endpoints", "DiskUtilization", 85, "ignore"),
        "EndpointAlarmsCpu": ("/aws/sagemaker/Endpoints", "CPUUtilization", 90 * 8, "ignore"),
        "EndpointAlarmsMemory": ("/aws/sagemaker/Endpoints", "MemoryUtilization", 90, "ignore"),
    }
    for key, (namespace, metric, threshold, missing) in expected.items():
        alarm = alarms[key]
        assert (alarm["Namespace"], alarm["MetricName"]) == (namespace, metric), key
        assert alarm["Dimensions"] == DIMS, key
        assert alarm["Threshold"] == threshold, key
        assert alarm["TreatMissingData"] == missing, key
        assert alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert alarms["EndpointAlarmsModelLatencyP90"]["ExtendedStatistic"] == "p90"


def test_error_rate_alarms_are_percentages_of_invocations(default_template: Template) -> None:
    alarm = _alarms(default_template)["EndpointAlarmsError5XxRate"]
    assert alarm["Threshold"] == 1
    assert alarm["TreatMissingData"] == "notBreaching"
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    assert queries["ep5xx_errors"]["MetricStat"]["Metric"]["MetricName"] == "Invocation5XXErrors"
    assert queries["ep5xx_total"]["MetricStat"]["Metric"]["MetricName"] == "Invocations"
    assert queries["ep5xx_errors"]["MetricStat"]["Metric"]["Dimensions"] == DIMS
    math = next(q for q in alarm["Metrics"] if "Expression" in q)
    assert math["Expression"] == "IF(ep5xx_total > 0, 100 * ep5xx_errors / ep5xx_total, 0)"
    assert _alarms(default_template)["EndpointAlarmsError4XxRate"]["Threshold"] == 10


def test_api_alarms(default_template: Template) -> None:
    alarms = _alarms(default_template)
    latency = alarms["ApiAlarmsApiLatencyP90"]
    assert (latency["Namespace"], latency["MetricName"], latency["Threshold"]) == ("AWS/ApiGateway", "Latency", 25000)
    assert {d["Name"] for d in latency["Dimensions"]} == {"ApiName", "Stage"}
    rate = alarms["ApiAlarmsApi5XxRate"]
    assert {q["MetricStat"]["Metric"]["MetricName"] for q in rate["Metrics"] if "MetricStat" in q} == {
        "5XXError", "Count"}


def test_thresholds_come_from_context_and_scale_with_devices() -> None:
    template = synth({"instance_type": "ml.g5.12xlarge", "alarm_gpu_memory_pct": 80, "alarm_cpu_pct": 50,
                      "alarm_model_latency_p90_ms": 1500})
    alarms = _alarms(template)
    assert alarms["EndpointAlarmsGpuMemory"]["Threshold"] == 80 * 4   # 4 GPUs, summed
    assert alarms["EndpointAlarmsCpu"]["Threshold"] == 50 * 48        # 48 vCPUs, summed
    assert alarms["EndpointAlarmsModelLatencyP90"]["Threshold"] == 1_500_000


def test_every_alarm_notifies_the_topic(default_template: Template) -> None:
    topic_ref = {"Ref": next(iter(resources(default_template, "AWS::SNS::Topic")))}
    alarms = _alarms(default_template)
    assert len(alarms) == 14  # 11 on AWS metrics, 3 on the handler's own (test_llm_metrics.py)
    for key, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic_ref], key
        assert alarm["OKActions"] == [topic_ref], key


def test_topic_is_encrypted_and_tls_only(default_template: Template) -> None:
    topic = only(default_template, "AWS::SNS::Topic")
    assert topic["KmsMasterKeyId"]["Fn::GetAtt"][0].startswith("AlertsKey")
    keys = resources(default_template, "AWS::KMS::Key")
    assert keys[topic["KmsMasterKeyId"]["Fn::GetAtt"][0]]["Properties"]["EnableKeyRotation"] is True
    statements = only(default_template, "AWS::SNS::TopicPolicy")["PolicyDocument"]["Statement"]
    assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
               for s in statements)
    assert not resources(default_template, "AWS::SNS::Subscription")


def test_email_subscription() -> None:
    template = synth({"alarm_email": "oncall@example.com"})
    assert only(template, "AWS::SNS::Subscription")["Endpoint"] == "oncall@example.com"


def test_outputs(default_template: Template) -> None:
    outputs = default_template.find_outputs("*")
    assert {"EndpointName", "EndpointArn", "ApiUrl", "ArtifactsBucketName", "DashboardUrl", "AlarmTopicArn",
            "ModelDataUri"} <= set(outputs)
    assert "ApiKeyId" not in outputs


def test_alarm_key_serves_only_this_accounts_alarms(default_template: Template) -> None:
    # GIVEN the key that encrypts the alarm topic
    key = next(r["Properties"] for k, r in resources(default_template, "AWS::KMS::Key").items()
               if k.startswith("AlertsKey"))
    # THEN CloudWatch may use it only on behalf of alarms of this account and region
    (statement,) = [s for s in key["KeyPolicy"]["Statement"]
                    if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    source_arn = json.dumps(statement["Condition"]["ArnLike"]["aws:SourceArn"])
    assert ":cloudwatch:" in source_arn and ":alarm:*" in source_arn and "AWS::AccountId" in source_arn
