"""cdk-nag AwsSolutions: the stack synthesizes with zero unacknowledged findings, and the check is live."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aws_cdk import aws_s3 as s3

from tests.cdk.conftest import make_stack


def _report(outdir: Path) -> list[dict]:
    report = json.loads((outdir / "validation-report.json").read_text(encoding="utf-8"))
    return report["pluginReports"]


KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
VPC = {"vpc_subnet_ids": ["subnet-0123456789abcdef1"], "vpc_security_group_ids": ["sg-0123456789abcdef0"]}
ADAPTERS = [{"name": "sql", "artifact_url": "s3://adapters/sql/v1.tar.gz"}]
# One context per endpoint mode and option set; test_cfn_lint.py lints the same templates.
MODES = {
    "defaults": {},
    "every-option": {"api_auth": "api_keys", "base_model": "s3://bases/llama/", "data_capture_percent": 5, **VPC,
                     "kms_key_arn": KEY_ARN, "model_data": "s3://m/run/model.tar.gz"},
    "inference-components": {"endpoint_mode": "inference_components", "adapter_components": ADAPTERS},
    "scale-to-zero": {"endpoint_mode": "inference_components", "scale_to_zero": True, "adapter_components": ADAPTERS,
                      "api_auth": "api_keys", "base_model": "s3://bases/llama/", **VPC, "kms_key_arn": KEY_ARN,
                      "scaling_metric": "invocations"},
    "serverless": {"endpoint_mode": "serverless", "model_size_mb": 900, "serverless_provisioned_concurrency": 1,
                   "kms_key_arn": KEY_ARN, "model_data": "s3://m/run/model.tar.gz"},
}


@pytest.mark.parametrize("context", list(MODES.values()), ids=list(MODES))
def test_no_unacknowledged_findings(tmp_path: Path, context: dict) -> None:
    app, _ = make_stack(context, nag=True, outdir=str(tmp_path))
    app.synth()  # raises on any error-level finding
    reports = _report(tmp_path)
    assert all(not r.get("violations") for r in reports), reports


def test_a_real_finding_fails_synth(tmp_path: Path) -> None:
    # GIVEN the same app plus one bucket without SSL enforcement or access logs
    app, stack = make_stack({}, nag=True, outdir=str(tmp_path))
    s3.Bucket(stack, "Careless")
    # THEN synth fails and the report names the rule
    with pytest.raises(RuntimeError, match="ValidationFailed"):
        app.synth()
    text = json.dumps(_report(tmp_path))
    assert "AwsSolutions-S1" in text and "Careless" in text
