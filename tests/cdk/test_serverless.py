"""Serverless mode: ServerlessConfig, the Hugging Face CPU container with code/inference.py, no autoscaling,
and the package-size checks."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from aws_cdk.assertions import Template

from cdk.app import warnings
from cdk.components.endpoint import SERVERLESS_COST
from cdk.settings import ContextError, DeploymentSettings
from lora_endpoint.contract import settings as handler_config
from tests.cdk.conftest import make_stack, only, resources, synth

SERVERLESS = {"endpoint_mode": "serverless", "model_size_mb": 900}
HF_IMAGE = "/huggingface-pytorch-inference:2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04"
MIB = 1 << 20


@pytest.fixture(scope="module")
def serverless() -> Template:
    return synth(SERVERLESS)


def test_variant_is_serverless_only(serverless: Template) -> None:
    (variant,) = only(serverless, "AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 6144, "MaxConcurrency": 5}
    assert variant["ModelName"]["Fn::GetAtt"][0].startswith("EndpointModel")
    for key in ("InstanceType", "InitialInstanceCount", "InferenceAmiVersion", "ManagedInstanceScaling",
                "ModelDataDownloadTimeoutInSeconds", "ContainerStartupHealthCheckTimeoutInSeconds"):
        assert key not in variant, key
    config = only(serverless, "AWS::SageMaker::EndpointConfig")
    assert "DataCaptureConfig" not in config and "ExecutionRoleArn" not in config


def test_serverless_config_comes_from_context() -> None:
    template = synth({**SERVERLESS, "serverless_memory_mb": 3072, "serverless_max_concurrency": 20,
                      "serverless_provisioned_concurrency": 2})
    (variant,) = only(template, "AWS::SageMaker::EndpointConfig")["ProductionVariants"]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 20, "ProvisionedConcurrency": 2}


def test_model_runs_the_hf_cpu_container_with_the_packages_inference_py() -> None:
    template = synth({**SERVERLESS, "region": "eu-west-1", "handler": {"dtype": "float32"}})
    (resource,) = resources(template, "AWS::SageMaker::Model").values()
    model = resource["Properties"]
    container = model["PrimaryContainer"]
    assert container["Image"]["Fn::Join"][1] == ["763104351884.dkr.ecr.eu-west-1.", {"Ref": "AWS::URLSuffix"},
                                                 HF_IMAGE]
    assert container["Environment"] == {
        "SAGEMAKER_PROGRAM": "inference.py",
        "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
        "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
        handler_config.ENV_DTYPE: "float32",
        handler_config.ENV_TIME_BUDGET_S: "25",
        handler_config.ENV_METRICS_ENDPOINT: "lora-endpoint",
        handler_config.ENV_METRICS_NAMESPACE: "LoraEndpoint",
    }
    # Serverless does not support network isolation: off, and said so.
    assert model["EnableNetworkIsolation"] is False
    (skip,) = resource["Metadata"]["checkov"]["skip"]
    assert skip["id"] == "CKV_AWS_370" and "Serverless" in skip["comment"]


def test_role_pulls_the_hf_image(serverless: Template) -> None:
    (policy,) = [p["Properties"] for p in resources(serverless, "AWS::IAM::Policy").values()
                 if p["Properties"]["PolicyName"].startswith("EndpointExecutionPolicy")]
    statements = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert statements["PullImage"]["Resource"] == (
        "arn:aws:ecr:us-east-1:763104351884:repository/huggingface-pytorch-inference")
    assert "PullLmiImage" not in statements


def test_no_autoscaling_resources(serverless: Template) -> None:
    # Serverless scales itself.
    assert not resources(serverless, "AWS::ApplicationAutoScaling::ScalableTarget")
    assert not resources(serverless, "AWS::ApplicationAutoScaling::ScalingPolicy")
    assert not resources(serverless, "AWS::SageMaker::InferenceComponent")


def test_no_gpu_or_cpu_alarms_without_instances(serverless: Template) -> None:
    keys = {k[:-8] for k in resources(serverless, "AWS::CloudWatch::Alarm")}
    assert "EndpointAlarmsGpuMemory" not in keys and "EndpointAlarmsCpu" not in keys
    assert {"EndpointAlarmsError5XxRate", "EndpointAlarmsModelLatencyP90", "EndpointAlarmsMemory"} <= keys
    body = json.dumps(only(serverless, "AWS::CloudWatch::Dashboard")["DashboardBody"])
    assert "GPUUtilization" not in body and "MemoryUtilization" in body


def test_synth_warns_about_cold_starts(tmp_path: Path) -> None:
    app, _ = make_stack(SERVERLESS, outdir=str(tmp_path))
    printed = warnings(app.synth())
    assert any(SERVERLESS_COST in w for w in printed)
    assert any("does not support network isolation" in w for w in printed)


def _manifest(files: dict[str, int]) -> bytes:
    entries = [{"path": path, "size": size, "sha256": "0" * 64} for path, size in files.items()]
    return json.dumps({"manifest_format": 1, "files": entries}).encode()


def _folder(tmp_path: Path, files: dict[str, int]) -> Path:
    root = tmp_path / "package"
    root.mkdir()
    (root / "serving.properties").write_text("engine=Python\n")
    (root / "manifest.json").write_bytes(_manifest(files))
    return root


def _archive(tmp_path: Path, first: str, files: dict[str, int]) -> Path:
    path = tmp_path / "model.tar.gz"
    members = {"manifest.json": _manifest(files), "serving.properties": b"engine=Python\n"}
    order = [first, *(name for name in members if name != first)]
    with tarfile.open(path, "w:gz") as tar:
        for name in order:
            info = tarfile.TarInfo(name)
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return path


def test_a_local_package_says_its_own_size(tmp_path: Path) -> None:
    # GIVEN a package whose manifest lists 2 GiB of weights
    files = {"base/model.safetensors": 2 << 30, "serving.properties": 14}
    folder = _folder(tmp_path, files)
    settings = DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(folder)})
    assert settings.package_bytes == (2 << 30) + 14
    # WHEN it is an archive, THEN only its first member (the manifest) is read
    archive = _archive(tmp_path, "manifest.json", files)
    settings = DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(archive)})
    assert settings.package_bytes == (2 << 30) + 14
    # AND the memory must hold it
    with pytest.raises(ContextError, match="set serverless_memory_mb to 3072 or more") as caught:
        DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(folder),
                                         "serverless_memory_mb": 2048})
    assert caught.value.key == "serverless_memory_mb"


def test_a_package_too_large_for_serverless_is_refused(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"base/model.safetensors": 6 << 30})
    with pytest.raises(ContextError) as caught:
        DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(folder)})
    assert caught.value.key == "endpoint_mode"
    assert "too large for serverless" in str(caught.value) and "5 GB of disk" in str(caught.value)
    assert "manifest.json" in str(caught.value)


def test_an_archive_without_a_leading_manifest_needs_its_size(tmp_path: Path) -> None:
    archive = _archive(tmp_path, "serving.properties", {"serving.properties": 14})
    with pytest.raises(ContextError, match=r"does not start with manifest\.json") as caught:
        DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(archive)})
    assert caught.value.key == "model_data"


def test_size_has_one_owner(tmp_path: Path) -> None:
    folder = _folder(tmp_path, {"serving.properties": 14})
    with pytest.raises(ContextError, match="drop model_size_mb") as caught:
        DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_data": str(folder),
                                         "model_size_mb": 10})
    assert caught.value.key == "model_size_mb"


def test_model_size_mb_is_checked_for_s3_packages() -> None:
    settings = DeploymentSettings.from_mapping({**SERVERLESS, "model_data": "s3://m/run/model.tar.gz"})
    assert settings.package_bytes == 900 * MIB and settings.package_source == "model_size_mb"
    with pytest.raises(ContextError, match="too large for serverless"):
        DeploymentSettings.from_mapping({"endpoint_mode": "serverless", "model_size_mb": 7000})
