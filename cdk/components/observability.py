"""Alarms on the endpoint's and the API's AWS metrics, and the alert topic (the dashboard: ``dashboard``;
alarms on the handler's own metrics: ``llm_metrics``).

Treat-missing-data, on purpose:
- request-driven metrics (error rates, latencies, setup time) are only published when there is traffic,
  so a gap means "no requests", not trouble: ``NOT_BREACHING``;
- instance metrics (CPU, memory, GPU memory, disk) are published every minute while instances run; a gap
  means the endpoint is being replaced or is gone, which the deployment and the 5XX alarm already cover:
  ``IGNORE`` keeps the last state instead of flapping during blue/green swaps.

Dimensions by endpoint mode: invocation metrics are the variant's (``EndpointName``, ``VariantName``), or
with inference components the base component's (``InferenceComponentName``); instance metrics stay the
variant's. Serverless endpoints have no GPU and no instance type to size the CPU threshold by: no GPU or
CPU alarm there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from constructs import Construct

from cdk.metrics_settings import ALARM_PERIOD_S
from cdk.settings import AlarmSettings, instance_gpus, instance_vcpus

PERIOD = Duration.seconds(ALARM_PERIOD_S)
SAGEMAKER = "AWS/SageMaker"
INSTANCE_NS = "/aws/sagemaker/Endpoints"
NOT_BREACHING = cw.TreatMissingData.NOT_BREACHING
IGNORE = cw.TreatMissingData.IGNORE


class AlertTopic(Construct):
    """SNS topic for alarms: TLS-only, encrypted with its own rotating key, optional e-mail subscription."""

    def __init__(self, scope: Construct, construct_id: str, *, email: str) -> None:
        super().__init__(scope, construct_id)
        # CloudWatch cannot publish to a topic encrypted with the AWS managed aws/sns key: use our own.
        self.key = kms.Key(self, "Key", enable_key_rotation=True, description="Encrypts the alarm topic")
        stack = Stack.of(self)
        # Only alarms of this account and region may use the key through CloudWatch (no confused deputy).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsOfThisAccount",
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],
                conditions={
                    "StringEquals": {"aws:SourceAccount": stack.account},
                    "ArnLike": {
                        "aws:SourceArn": f"arn:{stack.partition}:cloudwatch:{stack.region}:{stack.account}:alarm:*"
                    },
                },
            )
        )
        self.topic = sns.Topic(self, "Topic", master_key=self.key, enforce_ssl=True)
        if email:
            self.topic.add_subscription(subs.EmailSubscription(email))


@dataclass(frozen=True)
class AlarmSpec:
    """One alarm: it breaches when ``datapoints`` of the last ``periods`` periods are above ``threshold``."""

    key: str
    description: str
    metric: cw.IMetric
    threshold: float
    missing: cw.TreatMissingData
    periods: int = 3
    datapoints: int = 2


def metric(namespace: str, name: str, dims: Mapping[str, str], statistic: str) -> cw.Metric:
    """``name`` in ``namespace`` with ``dims``, at the alarms' period."""
    return cw.Metric(namespace=namespace, metric_name=name, dimensions_map=dict(dims), statistic=statistic,
                     period=PERIOD)


def _rate(errors: cw.IMetric, total: cw.IMetric, label: str, name: str) -> cw.MathExpression:
    """``errors`` as a percentage of ``total``; ``name`` keeps ids unique when graphs share expressions."""
    return cw.MathExpression(
        expression=f"IF({name}_total > 0, 100 * {name}_errors / {name}_total, 0)",
        using_metrics={f"{name}_errors": errors, f"{name}_total": total},
        label=label,
        period=PERIOD,
    )


class EndpointAlarms(Construct):
    """Alarms on the endpoint's invocation and instance metrics; ``rollback_alarms`` guard deployments.

    ``instance_type`` None (serverless): no GPU or CPU alarm.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: AlarmSettings,
        subject: str,
        invocation_dims: Mapping[str, str],
        instance_dims: Mapping[str, str],
        instance_type: str | None,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        dims, instance = dict(invocation_dims), dict(instance_dims)
        invocations = metric(SAGEMAKER, "Invocations", dims, "Sum")
        self.metrics: dict[str, cw.IMetric] = {
            "invocations": invocations,
            "model_latency": metric(SAGEMAKER, "ModelLatency", dims, "p90"),
            "overhead_latency": metric(SAGEMAKER, "OverheadLatency", dims, "p90"),
        }
        if instance_type is not None:
            self.metrics["gpu_utilization"] = metric(INSTANCE_NS, "GPUUtilization", instance, "Average")
        gpus = instance_gpus(instance_type) if instance_type is not None else 0
        vcpus = instance_vcpus(instance_type) if instance_type is not None else 0
        specs = [
            AlarmSpec("error_5xx_rate", f"Invocation 5XX errors above {settings.error_5xx_rate_pct}% of requests",
                  _rate(metric(SAGEMAKER, "Invocation5XXErrors", dims, "Sum"), invocations, "5XX %", "ep5xx"),
                  settings.error_5xx_rate_pct, NOT_BREACHING),
            AlarmSpec("error_4xx_rate", f"Invocation 4XX errors above {settings.error_4xx_rate_pct}% of requests",
                  _rate(metric(SAGEMAKER, "Invocation4XXErrors", dims, "Sum"), invocations, "4XX %", "ep4xx"),
                  settings.error_4xx_rate_pct, NOT_BREACHING),
            # ModelLatency / OverheadLatency / ModelSetupTime are in microseconds.
            AlarmSpec("model_latency_p90", f"ModelLatency p90 above {settings.model_latency_p90_ms} ms",
                  self.metrics["model_latency"], settings.model_latency_p90_ms * 1000, NOT_BREACHING),
            AlarmSpec("overhead_latency_p90", f"OverheadLatency p90 above {settings.overhead_latency_p90_ms} ms",
                  self.metrics["overhead_latency"], settings.overhead_latency_p90_ms * 1000, NOT_BREACHING),
            AlarmSpec("model_setup_time", f"ModelSetupTime above {settings.model_setup_time_s} s",
                  metric(SAGEMAKER, "ModelSetupTime", dims, "Maximum"), settings.model_setup_time_s * 1e6,
                  NOT_BREACHING),
            # Instance metrics are summed over devices: per-GPU / per-vCPU thresholds times the count.
            AlarmSpec("gpu_memory", f"GPU memory above {settings.gpu_memory_pct}% per GPU",
                  metric(INSTANCE_NS, "GPUMemoryUtilization", instance, "Maximum"),
                  settings.gpu_memory_pct * gpus, IGNORE) if gpus else None,
            AlarmSpec("disk", f"Disk above {settings.disk_pct}%",
                  metric(INSTANCE_NS, "DiskUtilization", instance, "Maximum"), settings.disk_pct, IGNORE),
            AlarmSpec("cpu", f"CPU above {settings.cpu_pct}% of all vCPUs",
                  metric(INSTANCE_NS, "CPUUtilization", instance, "Average"),
                  settings.cpu_pct * vcpus, IGNORE) if vcpus else None,
            AlarmSpec("memory", f"Memory above {settings.memory_pct}%",
                  metric(INSTANCE_NS, "MemoryUtilization", instance, "Average"), settings.memory_pct, IGNORE),
        ]
        self.alarms = {spec.key: topic_alarm(self, spec, topic, subject) for spec in specs if spec is not None}
        self.rollback_alarms = [self.alarms[k] for k in ("error_5xx_rate", "model_latency_p90")]


class ApiAlarms(Construct):
    """5XX rate and latency of the API stage."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: AlarmSettings, api_name: str, stage: str,
        topic: sns.ITopic,
    ) -> None:
        super().__init__(scope, construct_id)
        dims = {"ApiName": api_name, "Stage": stage}
        self.metrics: dict[str, cw.IMetric] = {
            "count": metric("AWS/ApiGateway", "Count", dims, "Sum"),
            "latency": metric("AWS/ApiGateway", "Latency", dims, "p90"),
            "4xx": metric("AWS/ApiGateway", "4XXError", dims, "Sum"),
            "5xx": metric("AWS/ApiGateway", "5XXError", dims, "Sum"),
        }
        specs = [
            AlarmSpec("api_5xx_rate", f"API 5XX above {settings.api_5xx_rate_pct}% of requests",
                  _rate(self.metrics["5xx"], self.metrics["count"], "API 5XX %", "api5xx"), settings.api_5xx_rate_pct,
                  NOT_BREACHING),
            AlarmSpec("api_latency_p90", f"API latency p90 above {settings.api_latency_p90_ms} ms",
                  self.metrics["latency"], settings.api_latency_p90_ms, NOT_BREACHING),
        ]
        self.alarms = {spec.key: topic_alarm(self, spec, topic, api_name) for spec in specs}


def topic_alarm(scope: Construct, spec: AlarmSpec, topic: sns.ITopic, subject: str) -> cw.Alarm:
    """The alarm of ``spec`` in ``scope``; it tells ``topic`` when it goes to ALARM and back to OK."""
    alarm = cw.Alarm(
        scope,
        spec.key.title().replace("_", ""),
        alarm_description=f"{subject}: {spec.description}",
        metric=spec.metric,
        threshold=spec.threshold,
        evaluation_periods=spec.periods,
        datapoints_to_alarm=spec.datapoints,
        comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
        treat_missing_data=spec.missing,
    )
    alarm.add_alarm_action(cw_actions.SnsAction(topic))
    alarm.add_ok_action(cw_actions.SnsAction(topic))
    return alarm
