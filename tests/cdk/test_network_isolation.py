"""Network isolation: on when the container needs no network, off (with a synth warning saying why) otherwise."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match, Template

from cdk.app import warnings
from cdk.settings import ContextError, DeploymentSettings
from tests.cdk.conftest import make_stack, resources

MODEL_PATH = "/LoraEndpoint/Endpoint/Model"


def _model(template: Template) -> dict[str, Any]:
    (model,) = resources(template, "AWS::SageMaker::Model").values()
    return model


def _checkov_skips(resource: dict[str, Any]) -> dict[str, str]:
    return {s["id"]: s["comment"] for s in resource.get("Metadata", {}).get("checkov", {}).get("skip", [])}


def _synth(context: dict[str, Any]) -> tuple[Template, Annotations]:
    _, stack = make_stack(context)
    return Template.from_stack(stack), Annotations.from_stack(stack)


@pytest.mark.parametrize("base_model", ["", "/opt/ml/model/base", "./base"], ids=["bundled", "absolute", "relative"])
def test_on_when_the_base_comes_with_the_model_data(base_model: str) -> None:
    template, annotations = _synth({"base_model": base_model} if base_model else {})
    model = _model(template)
    assert model["Properties"]["EnableNetworkIsolation"] is True
    assert "CKV_AWS_370" not in _checkov_skips(model)
    annotations.has_no_warning(MODEL_PATH, Match.any_value())


@pytest.mark.parametrize(
    ("base_model", "why"),
    [("meta-llama/Llama-3.1-8B", "Hugging Face Hub id"), ("s3://bases/llama/", "CloudFormation")],
    ids=["hub-id", "s3-prefix"],
)
def test_off_with_a_warning_when_the_base_needs_the_network(base_model: str, why: str) -> None:
    template, annotations = _synth({"base_model": base_model})
    model = _model(template)
    assert model["Properties"]["EnableNetworkIsolation"] is False
    # THEN synth says why, and the checkov finding carries the same reason
    annotations.has_warning(MODEL_PATH, Match.string_like_regexp(f"network isolation is off: .*{why}"))
    assert why in _checkov_skips(model)["CKV_AWS_370"]


def test_the_s3_base_keeps_its_read_grant() -> None:
    template, _ = _synth({"base_model": "s3://bases/llama/"})
    policy = next(p["Properties"] for k, p in resources(template, "AWS::IAM::Policy").items()
                  if k.startswith("EndpointExecutionPolicy"))
    sids = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert sids["ReadBaseModel"]["Resource"] == "arn:aws:s3:::bases/llama/*"


def test_a_handler_setting_base_counts_too() -> None:
    # GIVEN the base named through the handler settings rather than base_model
    template, _ = _synth({"handler": {"base_model": "s3://bases/qwen/"}})
    # THEN it is treated the same way: isolation off, read granted
    assert _model(template)["Properties"]["EnableNetworkIsolation"] is False
    assert "arn:aws:s3:::bases/qwen/*" in json.dumps(template.to_json())


def test_forced_off() -> None:
    template, annotations = _synth({"network_isolation": "false"})
    assert _model(template)["Properties"]["EnableNetworkIsolation"] is False
    annotations.has_warning(MODEL_PATH, Match.string_like_regexp("network_isolation=false was set"))


@pytest.mark.parametrize("value", ["true", True])
def test_forced_on_refuses_a_base_it_cannot_load(value: object) -> None:
    with pytest.raises(ContextError, match=r"context key 'network_isolation': cannot be true: .*Hub id"):
        DeploymentSettings.from_mapping({"network_isolation": value, "base_model": "gpt2"})
    assert DeploymentSettings.from_mapping({"network_isolation": value}).endpoint.isolation.enabled


def test_unknown_value_is_a_context_error() -> None:
    with pytest.raises(ContextError, match="'network_isolation': must be one of auto, true, false, got 'maybe'"):
        DeploymentSettings.from_mapping({"network_isolation": "maybe"})


def test_vpc_settings_keep_working_with_isolation() -> None:
    template, _ = _synth({"vpc_subnet_ids": ["subnet-0123456789abcdef1"], "vpc_security_group_ids": ["sg-1"]})
    props = _model(template)["Properties"]
    assert props["EnableNetworkIsolation"] is True
    assert props["VpcConfig"] == {"Subnets": ["subnet-0123456789abcdef1"], "SecurityGroupIds": ["sg-1"]}


def _package_folder(root: Path, serving: str) -> Path:
    root.mkdir()
    (root / "serving.properties").write_text(serving, encoding="utf-8")
    return root


def _package_archive(path: Path, members: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(gzip.compress(buffer.getvalue()))
    return path


def test_a_local_package_that_names_a_hub_base_is_seen(tmp_path: Path) -> None:
    # GIVEN a package folder built with --base-model <hub id> (the option wins over LORA_BASE_MODEL)
    folder = _package_folder(tmp_path / "pkg", "engine=Python\noption.base_model=meta-llama/Llama-3.1-8B\n")
    settings = DeploymentSettings.from_mapping({"model_data": str(folder)}).endpoint
    # THEN synth knows the container needs the network
    assert settings.effective_base_model == "meta-llama/Llama-3.1-8B"
    assert not settings.isolation.enabled


def test_local_archives_are_read_up_to_serving_properties_or_base(tmp_path: Path) -> None:
    options = b"engine=Python\noption.base_model=s3://bases/llama/\n"
    named = _package_archive(tmp_path / "named.tar.gz", {"lora_endpoint/handler/x.py": b"",
                                                                "serving.properties": options})
    bundled = _package_archive(tmp_path / "bundled.tar.gz", {"base/config.json": b"{}", "serving.properties": options})
    assert DeploymentSettings.from_mapping({"model_data": str(named)}).endpoint.effective_base_model == (
        "s3://bases/llama/")
    # A bundled base/ sorts before serving.properties: the packager names no other base then.
    assert DeploymentSettings.from_mapping({"model_data": str(bundled)}).endpoint.isolation.enabled


def test_run_directly_the_app_prints_the_warning(tmp_path: Path) -> None:
    app, _ = make_stack({"base_model": "gpt2"}, outdir=str(tmp_path))
    assert any(w.startswith("network isolation is off: base model 'gpt2'") for w in warnings(app.synth()))


def test_a_setting_the_package_fixes_is_refused_in_the_context(tmp_path: Path) -> None:
    from cdk.errors import ContextError

    # GIVEN a package built with --dtype bfloat16 and a hub base (its options win over the environment)
    serving = "engine=Python\noption.dtype=bfloat16\noption.base_model=meta-llama/Llama-3.1-8B\n"
    folder = _package_folder(tmp_path / "pkg", serving)
    archive = _package_archive(tmp_path / "pkg.tar.gz", {"lora_endpoint/handler/x.py": b"",
                                                              "serving.properties": serving.encode()})
    for model_data in (str(folder), str(archive)):
        # THEN a context that sets them otherwise fails synth, naming the key, instead of being ignored
        with pytest.raises(ContextError, match=r"'handler'.*dtype='float16' would be ignored.*option.dtype='bfloat16'"):
            DeploymentSettings.from_mapping({"model_data": model_data, "handler": {"dtype": "float16"}})
        with pytest.raises(ContextError, match=r"'base_model'.*option.base_model='meta-llama/Llama-3.1-8B'"):
            DeploymentSettings.from_mapping({"model_data": model_data, "base_model": "s3://other/base/"})
        # AND the same values, and settings the package leaves open, are fine
        settings = DeploymentSettings.from_mapping({"model_data": model_data, "handler": {
            "dtype": "bfloat16", "max_queue": 64}}).endpoint
        assert settings.effective_base_model == "meta-llama/Llama-3.1-8B"
    # AND model data in S3 cannot be read at synth: nothing to check there
    DeploymentSettings.from_mapping({"model_data": "s3://bucket/pkg/", "handler": {"dtype": "float16"}})
