"""Security defaults across the template: key policies bound to this account, every checkov skip's reason."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.cdk.conftest import resources, synth

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
EVERY_OPTION = {"api_auth": "api_keys", "base_model": "s3://bases/llama/", "data_capture_percent": 5,
                "vpc_subnet_ids": ["subnet-0123456789abcdef1"], "vpc_security_group_ids": ["sg-0123456789abcdef0"],
                "kms_key_arn": KEY_ARN, "alarm_email": "a@example.com", "removal_policy": "destroy"}

# Condition keys that tie a service's use of a key to this account's own resources.
SOURCE_KEYS = ("aws:SourceAccount", "aws:SourceArn", "kms:EncryptionContext:aws:logs:arn")


@pytest.fixture(scope="module")
def every_option() -> Template:
    return synth(EVERY_OPTION)


def _service_statements(template: Template) -> list[tuple[str, dict[str, Any]]]:
    return [(key_id, s) for key_id, key in resources(template, "AWS::KMS::Key").items()
            for s in key["Properties"]["KeyPolicy"]["Statement"] if "Service" in s.get("Principal", {})]


@pytest.mark.parametrize("which", ["defaults", "every-option"])
def test_every_service_principal_in_a_key_policy_is_bound_to_this_account(
    default_template: Template, every_option: Template, which: str
) -> None:
    template = default_template if which == "defaults" else every_option
    statements = _service_statements(template)
    assert len(statements) == 3  # the alarm topic's key, the access logs' key and the container logs' key
    for key_id, statement in statements:
        conditioned = {name for test in statement.get("Condition", {}).values() for name in test}
        assert conditioned & set(SOURCE_KEYS), (key_id, statement)


@pytest.mark.parametrize("which", ["defaults", "every-option"])
def test_every_checkov_skip_names_a_known_check_and_a_reason(
    default_template: Template, every_option: Template, which: str
) -> None:
    template = default_template if which == "defaults" else every_option
    skips = {(logical_id[:-8], s["id"]): s["comment"]  # logical ids end in an 8-digit hash
             for logical_id, r in template.to_json()["Resources"].items()
             for s in r.get("Metadata", {}).get("checkov", {}).get("skip", [])}
    expected = {("ArtifactsAccessLogs", "CKV_AWS_18"), ("ArtifactsAccessLogs", "CKV_AWS_21"),
                ("ApiDeploymentStagev1", "CKV_AWS_120")}
    if which == "every-option":
        expected |= {("EndpointVpcPolicy", "CKV_AWS_109"), ("EndpointVpcPolicy", "CKV_AWS_111"),
                     ("EndpointModel", "CKV_AWS_370")}
    assert set(skips) == expected
    assert all(len(comment) > 40 for comment in skips.values())
