"""The synthesized template passes cfn-lint with zero errors (and zero warnings)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from tests.cdk.conftest import synth
from tests.cdk.test_nag import MODES

cfnlint_api = pytest.importorskip("cfnlint.api")


def _lint(template: Mapping[str, Any], tmp_path: Path) -> list:
    path = tmp_path / "template.json"
    path.write_text(json.dumps(template), encoding="utf-8")
    return cfnlint_api.lint_file(path, config=cfnlint_api.ManualArgs(regions=["us-east-1"]))


def test_default_template_is_clean(default_template: Template, tmp_path: Path) -> None:
    matches = _lint(default_template.to_json(), tmp_path)
    assert [str(m) for m in matches] == []


def test_every_option_template_is_clean(tmp_path: Path) -> None:
    template = synth({"api_auth": "api_keys", "data_capture_percent": 10, "alarm_email": "a@example.com",
                      "vpc_subnet_ids": ["subnet-0123456789abcdef1"],
                      "vpc_security_group_ids": ["sg-0123456789abcdef0"],
                      "model_data": "s3://m/run/", "base_model": "s3://bases/llama/",
                      "kms_key_arn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"})
    matches = _lint(template.to_json(), tmp_path)
    assert [str(m) for m in matches] == []


@pytest.mark.parametrize("mode", [name for name in MODES if name not in ("defaults", "every-option")])
def test_every_endpoint_mode_template_is_clean(mode: str, tmp_path: Path) -> None:
    matches = _lint(synth(MODES[mode]).to_json(), tmp_path)
    assert [str(m) for m in matches] == []


def test_lint_catches_a_broken_template(default_template: Template, tmp_path: Path) -> None:
    broken = json.loads(json.dumps(default_template.to_json()))
    config = next(r for r in broken["Resources"].values() if r["Type"] == "AWS::SageMaker::EndpointConfig")
    config["Properties"]["ProductionVariants"][0]["InferenceAmiVersion"] = "al2023-made-up"
    assert _lint(broken, tmp_path)


def test_lint_checks_the_inference_components(tmp_path: Path) -> None:
    broken = json.loads(json.dumps(synth(MODES["inference-components"]).to_json()))
    adapter = next(r for r in broken["Resources"].values() if r["Type"] == "AWS::SageMaker::InferenceComponent"
                   and "BaseInferenceComponentName" in r["Properties"]["Specification"])
    adapter["Properties"]["Specification"]["Container"]["ArtifactUrl"] = "ftp://nowhere/sql.tar.gz"
    assert _lint(broken, tmp_path)
