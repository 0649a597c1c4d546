"""Execution role least privilege, model container, endpoint config and blue/green rollback."""

from __future__ import annotations

import json

import pytest
from aws_cdk.assertions import Template

from lora_endpoint.contract import settings as handler_config
from tests.cdk.conftest import only, resources, synth

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _execution_statements(template: Template) -> dict[str, dict]:
    policies = [p["Properties"] for p in resources(template, "AWS::IAM::Policy").values()
                if p["Properties"]["PolicyName"].startswith("EndpointExecutionPolicy")]
    assert len(policies) == 1
    return {s["Sid"]: s for s in policies[0]["PolicyDocument"]["Statement"]}


def test_role_has_no_managed_policies_and_only_scoped_resources(default_template: Template) -> None:
    role = next(r["Properties"] for k, r in resources(default_template, "AWS::IAM::Role").items()
                if k.startswith("EndpointExecutionRole"))
    assert "ManagedPolicyArns" not in role
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    statements = _execution_statements(default_template)
    assert set(statements) == {"PullLmiImage", "EcrToken", "OwnLogs", "OwnMetrics", "ReadModelData", "ListModelData"}
    # Only the two actions without resource-level permissions use "*", and metrics carry a namespace condition.
    wildcard = {sid for sid, s in statements.items() if s["Resource"] == "*"}
    assert wildcard == {"EcrToken", "OwnMetrics"}
    assert statements["EcrToken"]["Action"] == "ecr:GetAuthorizationToken"
    assert "cloudwatch:namespace" in statements["OwnMetrics"]["Condition"]["StringLike"]
    assert statements["PullLmiImage"]["Resource"] == "arn:aws:ecr:us-east-1:763104351884:repository/djl-inference"
    assert all(not a.endswith("*") for s in statements.values()
               for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"]))
    log_arns = json.dumps(statements["OwnLogs"]["Resource"])
    assert "/aws/sagemaker/Endpoints/lora-endpoint" in log_arns


def test_s3_base_model_and_data_capture_grants() -> None:
    template = synth({"base_model": "s3://bases/llama-3-8b/", "data_capture_percent": 20,
                      "model_data": "s3://models/run-1/model.tar.gz", "kms_key_arn": KEY_ARN})
    statements = _execution_statements(template)
    assert statements["ReadModelData"]["Resource"] == "arn:aws:s3:::models/run-1/model.tar.gz"
    assert statements["ReadBaseModel"]["Resource"] == "arn:aws:s3:::bases/llama-3-8b/*"
    assert statements["ListBaseModel"]["Condition"] == {"StringLike": {"s3:prefix": ["llama-3-8b/*"]}}
    assert statements["WriteDataCapture"]["Action"] == "s3:PutObject"
    capture = only(template, "AWS::SageMaker::EndpointConfig")["DataCaptureConfig"]
    assert capture["InitialSamplingPercentage"] == 20
    assert capture["EnableCapture"] is True
    env = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]["Environment"]
    assert env[handler_config.ENV_BASE_MODEL] == "s3://bases/llama-3-8b/"


def test_model_uses_the_pinned_lmi_image_and_handler_env() -> None:
    template = synth({"region": "eu-west-1", "handler": {"dtype": "bfloat16", "max_new_tokens": 2048}})
    container = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert container["Image"]["Fn::Join"][1] == [
        "763104351884.dkr.ecr.eu-west-1.", {"Ref": "AWS::URLSuffix"}, "/djl-inference:0.38.0-lmi29.0.0-cu130"]
    assert container["Environment"] == {
        handler_config.ENV_DTYPE: "bfloat16",
        handler_config.ENV_MAX_NEW_TOKENS: "2048",
        handler_config.ENV_TIME_BUDGET_S: "25",
        handler_config.ENV_METRICS_ENDPOINT: "lora-endpoint",
        handler_config.ENV_METRICS_NAMESPACE: "LoraEndpoint",
    }
    assert container["Mode"] == "SingleModel"


def test_model_waits_for_its_policy(default_template: Template) -> None:
    model = next(iter(resources(default_template, "AWS::SageMaker::Model").values()))
    assert any(dep.startswith("EndpointExecutionPolicy") for dep in model["DependsOn"])


def test_endpoint_config_suits_llms(default_template: Template) -> None:
    variant = only(default_template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"][0]
    assert variant["InstanceType"] == "ml.g5.2xlarge"
    assert variant["InitialInstanceCount"] == 1
    assert variant["ModelDataDownloadTimeoutInSeconds"] == 1800
    assert variant["ContainerStartupHealthCheckTimeoutInSeconds"] == 1800
    assert variant["InferenceAmiVersion"] == "al2023-ami-sagemaker-inference-gpu-4-1"
    assert variant["RoutingConfig"] == {"RoutingStrategy": "LEAST_OUTSTANDING_REQUESTS"}
    # Local-NVMe GPU instances reject both.
    assert "VolumeSizeInGB" not in variant
    assert "KmsKeyId" not in only(default_template, "AWS::SageMaker::EndpointConfig")


def test_vpc_config() -> None:
    subnets, groups = ["subnet-0123456789abcdef1", "subnet-0123456789abcdef2"], ["sg-0123456789abcdef0"]
    template = synth({"vpc_subnet_ids": subnets, "vpc_security_group_ids": groups})
    model = next(iter(resources(template, "AWS::SageMaker::Model").values()))
    assert model["Properties"]["VpcConfig"] == {"Subnets": subnets, "SecurityGroupIds": groups}
    # The network-interface actions sit in a policy of their own, which the model waits for.
    vpc_policies = {k: p for k, p in resources(template, "AWS::IAM::Policy").items()
                    if k.startswith("EndpointVpcPolicy")}
    ((logical_id, policy),) = vpc_policies.items()
    (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Sid"] == "VpcNetworkInterfaces"
    assert "ec2:CreateNetworkInterface" in statement["Action"]
    assert logical_id in model["DependsOn"]
    assert "VpcNetworkInterfaces" not in _execution_statements(template)


def test_blue_green_rolls_back_on_alarms(default_template: Template) -> None:
    endpoint = only(default_template, "AWS::SageMaker::Endpoint")
    assert endpoint["EndpointName"] == "lora-endpoint"
    config = endpoint["DeploymentConfig"]
    assert config["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"] == {
        "Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600}
    alarm_refs = [a["AlarmName"]["Ref"] for a in config["AutoRollbackConfiguration"]["Alarms"]]
    alarms = resources(default_template, "AWS::CloudWatch::Alarm")
    assert len(alarm_refs) == 2 and all(ref in alarms for ref in alarm_refs)
    assert {ref.split("Alarms")[1][:8] for ref in alarm_refs} == {"Error5Xx", "ModelLat"}


def test_data_capture_is_encrypted_with_the_customer_key() -> None:
    template = synth({"data_capture_percent": 5, "kms_key_arn": KEY_ARN})
    assert only(template, "AWS::SageMaker::EndpointConfig")["DataCaptureConfig"]["KmsKeyId"] == KEY_ARN
    assert {"kms:Encrypt", "kms:GenerateDataKey"} <= set(_execution_statements(template)["UseCustomerKey"]["Action"])


@pytest.mark.parametrize("context", [
    {},
    {"endpoint_mode": "inference_components", "adapter_components": [
        {"name": "sql", "artifact_url": "s3://adapters/sql/v1.tar.gz"}]},
    {"endpoint_mode": "serverless", "model_size_mb": 900},
], ids=["variant", "inference_components", "serverless"])
def test_the_container_publishes_its_metrics_under_the_endpoints_name(context: dict) -> None:
    # GIVEN a named endpoint with its own metrics namespace, in each endpoint mode
    template = synth({**context, "endpoint_name": "chat", "metrics_namespace": "Team/LLM"})
    # THEN the one model container (with inference components, the base's, which the adapters share) names the
    # endpoint, not a component, as the metrics' Endpoint dimension, and the namespace the dashboard reads
    env = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]["Environment"]
    assert env[handler_config.ENV_METRICS_ENDPOINT] == "chat"
    assert env[handler_config.ENV_METRICS_NAMESPACE] == "Team/LLM"
    assert handler_config.HandlerSettings.from_env(env).metrics_endpoint == "chat"
