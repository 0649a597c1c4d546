"""Scalable target on the variant and the target-tracking policy."""

from __future__ import annotations

from aws_cdk.assertions import Template

from tests.cdk.conftest import only, synth


def test_target_on_the_variant(default_template: Template) -> None:
    target = only(default_template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert target["ResourceId"] == "endpoint/lora-endpoint/variant/AllTraffic"
    assert target["ScalableDimension"] == "sagemaker:variant:DesiredInstanceCount"
    assert target["ServiceNamespace"] == "sagemaker"
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 2)
    deps = next(iter(default_template.find_resources("AWS::ApplicationAutoScaling::ScalableTarget").values()))
    assert any(d.startswith("Endpoint8024") for d in deps["DependsOn"])


def test_concurrency_tracking_by_default(default_template: Template) -> None:
    config = only(default_template, "AWS::ApplicationAutoScaling::ScalingPolicy")[
        "TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantConcurrentRequestsPerModelHighResolution"}
    assert config["TargetValue"] == 4
    assert (config["ScaleInCooldown"], config["ScaleOutCooldown"]) == (600, 120)


def test_invocations_per_instance_on_request() -> None:
    template = synth({"scaling_metric": "invocations", "min_capacity": 2, "max_capacity": 6, "instance_count": 2})
    config = only(template, "AWS::ApplicationAutoScaling::ScalingPolicy")["TargetTrackingScalingPolicyConfiguration"]
    assert config["PredefinedMetricSpecification"]["PredefinedMetricType"] == "SageMakerVariantInvocationsPerInstance"
    assert config["TargetValue"] == 60
    target = only(template, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 6)
