"""The container log groups SageMaker writes to, owned by the stack in every endpoint mode: names, KMS key,
retention, removal, creation order, and the execution role's log permissions naming the same groups."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.cdk.conftest import resources, synth

ENDPOINT_GROUP = "/aws/sagemaker/Endpoints/lora-endpoint"
BASE_GROUP = "/aws/sagemaker/InferenceComponents/lora-endpoint-base"
ADAPTERS = [{"name": "sql", "artifact_url": "s3://adapter-bucket/sql/v1.tar.gz"}]
MODES = {
    "variant": ({}, {ENDPOINT_GROUP}),
    "inference_components": ({"endpoint_mode": "inference_components", "adapter_components": ADAPTERS},
                             {ENDPOINT_GROUP, BASE_GROUP}),
    "serverless": ({"endpoint_mode": "serverless", "model_size_mb": 900}, {ENDPOINT_GROUP}),
}


@pytest.fixture(scope="module", params=list(MODES))
def mode(request: pytest.FixtureRequest) -> tuple[Template, set[str]]:
    context, groups = MODES[request.param]
    return synth(context), groups


def _container_groups(template: Template) -> dict[str, tuple[str, dict[str, Any]]]:
    """The /aws/sagemaker/ log groups by name: (logical id, resource)."""
    return {r["Properties"]["LogGroupName"]: (k, r) for k, r in resources(template, "AWS::Logs::LogGroup").items()
            if r["Properties"]["LogGroupName"].startswith("/aws/sagemaker/")}


def _log_group_names(statement: dict[str, Any]) -> set[str]:
    """The log groups a policy statement names (``...:log-group:<name>[:log-stream:*]``)."""
    return set(re.findall(r":log-group:([^:\"]+)", json.dumps(statement["Resource"])))


def test_each_container_log_group_has_its_own_key_and_the_retention(mode: tuple[Template, set[str]]) -> None:
    template, expected = mode
    groups = _container_groups(template)
    assert set(groups) == expected
    keys = resources(template, "AWS::KMS::Key")
    for name, (_, group) in groups.items():
        props = group["Properties"]
        assert props["RetentionInDays"] == 90, name
        assert group["DeletionPolicy"] == "Retain", name
        key = keys[props["KmsKeyId"]["Fn::GetAtt"][0]]["Properties"]
        assert key["EnableKeyRotation"] is True
        # CloudWatch Logs may use the key for this one log group only.
        (statement,) = [s for s in key["KeyPolicy"]["Statement"] if "Service" in s["Principal"]]
        assert statement["Principal"] == {"Service": "logs.us-east-1.amazonaws.com"}
        arn = json.dumps(statement["Condition"]["ArnEquals"]["kms:EncryptionContext:aws:logs:arn"])
        assert arn.endswith(f':log-group:{name}"]]}}'), arn
    assert len({g["Properties"]["KmsKeyId"]["Fn::GetAtt"][0] for _, g in groups.values()}) == len(groups)


def test_the_groups_exist_before_sagemaker_starts_a_container(mode: tuple[Template, set[str]]) -> None:
    template, _ = mode
    groups = _container_groups(template)
    (endpoint,) = resources(template, "AWS::SageMaker::Endpoint").values()
    assert groups[ENDPOINT_GROUP][0] in endpoint["DependsOn"]
    for component in resources(template, "AWS::SageMaker::InferenceComponent").values():
        if "ModelName" in component["Properties"]["Specification"]:  # the base: it runs the container
            assert groups[BASE_GROUP][0] in component["DependsOn"]


def test_the_execution_role_writes_exactly_these_groups(mode: tuple[Template, set[str]]) -> None:
    template, expected = mode
    (policy,) = [p["Properties"] for k, p in resources(template, "AWS::IAM::Policy").items()
                 if k.startswith("EndpointExecutionPolicy")]
    statements = [s for s in policy["PolicyDocument"]["Statement"] if s["Sid"] in ("OwnLogs", "ComponentLogs")]
    assert all("logs:PutLogEvents" in s["Action"] for s in statements)
    assert set().union(*(_log_group_names(s) for s in statements)) == expected


def test_retention_and_removal_follow_the_stack_settings() -> None:
    template = synth({"endpoint_mode": "inference_components", "log_retention_days": 14,
                      "removal_policy": "destroy"})
    groups = _container_groups(template)
    assert set(groups) == {ENDPOINT_GROUP, BASE_GROUP}
    keys = resources(template, "AWS::KMS::Key")
    for name, (_, group) in groups.items():
        assert group["Properties"]["RetentionInDays"] == 14, name
        assert group["DeletionPolicy"] == "Delete", name
        assert keys[group["Properties"]["KmsKeyId"]["Fn::GetAtt"][0]]["DeletionPolicy"] == "Delete", name
