"""Bad context fails synth with a message naming the key; the CLI path prints it without a trace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cdk.model_data import ModelDataKind
from cdk.settings import ContextError, DeploymentSettings, known_keys
from lora_endpoint.contract import settings as handler_config
from tests.docs import doc

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("context", "key", "fragment"),
    [
        ({"instance_type": "ml.z9.2xlarge"}, "instance_type", "unknown instance type family 'z9'"),
        ({"instance_type": "ml.p3.2xlarge"}, "instance_type", "unknown instance type family 'p3'"),
        ({"instance_type": "g5.2xlarge"}, "instance_type", "ml.<family>.<size>"),
        ({"min_capacity": 3, "max_capacity": 2}, "min_capacity", "must not exceed max_capacity"),
        ({"min_capacity": "2", "max_capacity": "4"}, "instance_count", "must lie within"),
        ({"model_data": "s3://my-bucket"}, "model_data", "needs a key"),
        ({"model_data": "s3://my-bucket/"}, "model_data", "needs a key"),
        ({"model_data": "s3://my-bucket/model"}, "model_data", "must end in .tar.gz"),
        ({"model_data": "/does/not/exist"}, "model_data", "no such file"),
        ({"region": "xx-nowhere-1"}, "region", "has no registry in 'xx-nowhere-1'"),
        ({"scaling_metric": "cpu"}, "scaling_metric", "must be one of"),
        ({"api_auth": "cognito"}, "api_auth", "must be one of"),
        ({"endpoint_name": "Bad_Name"}, "endpoint_name", "lower-case"),
        ({"handler": {"dtype": "int3"}}, "handler", handler_config.ENV_DTYPE),
        ({"handler": {"no_such_setting": 1}}, "handler", "unknown handler setting"),
        ({"handler": {"time_budget_s": 40}}, "handler", "below api_timeout_s"),
        ({"instance_count": "two"}, "instance_count", "must be an integer"),
        ({"vpc_subnet_ids": "subnet-0123456789abcdef1"}, "vpc_security_group_ids", "together"),
        ({"data_capture_percent": 10}, "data_capture_percent", "(customer data) in S3: set kms_key_arn"),
        ({"log_retention_days": 10}, "log_retention_days", "retentions"),
        ({"base_model": "s3://bucket"}, "base_model", "key prefix"),
        ({"endpoint_mode": "lambda"}, "endpoint_mode", "must be one of variant, inference_components, serverless"),
        ({"metrics_namespace": "AWS/SageMaker"}, "metrics_namespace", "not AWS/"),
        ({"metrics_namespace": "Lora Endpoint"}, "metrics_namespace", "no spaces"),
        ({"metrics_namespace": ":Lora"}, "metrics_namespace", "not starting with ':'"),
        ({"metrics_namespace": "x" * 256}, "metrics_namespace", "1-255"),
        ({"handler": {"metrics_namespace": "Other"}}, "handler", "use the context key metrics_namespace"),
        ({"handler": {"metrics_endpoint": "other"}}, "handler", "the endpoint's name (endpoint_name)"),
        ({"alarm_ttft_p90_ms": 0}, "alarm_ttft_p90_ms", "must be positive"),
        ({"alarm_queue_depth": -1}, "alarm_queue_depth", "must be positive"),
        ({"alarm_overload_errors": -1}, "alarm_overload_errors", "must be 0 (alarm on any) or more"),
        ({"alarm_queue_depth": 256}, "alarm_queue_depth", "below the handler's max_queue (256)"),
        ({"handler": {"max_queue": 16}}, "alarm_queue_depth", "below the handler's max_queue (16)"),
        ({"handler": {"metrics_interval_s": 300}}, "handler", "metrics_interval_s (300) must be at most 150 s"),
    ],
)
def test_bad_context_names_the_key(context: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ContextError) as caught:
        DeploymentSettings.from_mapping(context)
    assert caught.value.key == key
    assert f"context key '{key}'" in str(caught.value)
    assert fragment in str(caught.value)


IC = {"endpoint_mode": "inference_components"}
SERVERLESS = {"endpoint_mode": "serverless", "model_size_mb": 500}
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ADAPTER = {"name": "sql", "artifact_url": "s3://b/adapters/sql.tar.gz"}


@pytest.mark.parametrize(
    ("context", "key", "fragment"),
    [
        # Scale to zero exists only with inference components, and means zero instances and copies.
        ({"scale_to_zero": True}, "scale_to_zero", "only through inference components"),
        ({**SERVERLESS, "scale_to_zero": "true"}, "scale_to_zero", "scales to zero by itself"),
        ({"min_capacity": 0}, "min_capacity", "needs endpoint_mode=inference_components with scale_to_zero"),
        ({**IC, "min_capacity": 0}, "min_capacity", "with scale_to_zero=true"),
        ({**IC, "scale_to_zero": True, "min_capacity": 1}, "min_capacity", "min_capacity must be 0"),
        ({**IC, "min_copies": 0}, "min_copies", "needs scale_to_zero=true"),
        ({**IC, "scale_to_zero": True, "min_copies": 1}, "min_copies", "must be 0"),
        ({**IC, "scale_to_zero": True, "copy_count": 0}, "copy_count", "refuses to create an inference component"),
        ({**IC, "copy_count": 3}, "copy_count", "within min_copies..max_copies (1..2)"),
        ({**IC, "scale_to_zero": "maybe"}, "scale_to_zero", "true or false"),
        # Settings of one mode are refused in another, not ignored.
        ({"copy_count": 2}, "copy_count", "applies to endpoint_mode=inference_components only"),
        ({"adapter_components": [ADAPTER]}, "adapter_components", "inference_components only"),
        ({"serverless_memory_mb": 2048}, "serverless_memory_mb", "applies to endpoint_mode=serverless only"),
        ({**IC, "model_size_mb": 100}, "model_size_mb", "serverless only"),
        ({**SERVERLESS, "instance_type": "ml.g5.xlarge"}, "instance_type", "not serverless"),
        ({**SERVERLESS, "max_capacity": 4}, "max_capacity", "not serverless"),
        # What inference components or serverless endpoints do not support.
        ({**IC, "data_capture_percent": 5, "kms_key_arn": KEY_ARN}, "data_capture_percent", "variant only"),
        ({**SERVERLESS, "data_capture_percent": 5, "kms_key_arn": KEY_ARN}, "data_capture_percent",
         "Serverless Inference does not support it"),
        ({**SERVERLESS, "vpc_subnet_ids": ["subnet-1"], "vpc_security_group_ids": ["sg-1"]}, "vpc_subnet_ids",
         "does not support VPC configuration"),
        ({**SERVERLESS, "network_isolation": "true"}, "network_isolation", "does not support network isolation"),
        ({**IC, "ic_accelerators": 2}, "ic_accelerators", "ml.g5.2xlarge has 1 GPU(s)"),
        ({**IC, "ic_min_memory_mb": 64}, "ic_min_memory_mb", "at least 128"),
        ({**IC, "endpoint_name": "e" * 60}, "endpoint_name", "at most 58 characters"),
        # Adapter components.
        ({**IC, "adapter_components": [ADAPTER, ADAPTER]}, "adapter_components", "unique, repeated: ['sql']"),
        ({**IC, "adapter_components": [{**ADAPTER, "name": "base"}]}, "adapter_components", "reserved"),
        ({**IC, "adapter_components": [{**ADAPTER, "name": "no_underscores"}]}, "adapter_components",
         "letters, digits and hyphens"),
        ({**IC, "adapter_components": [{**ADAPTER, "artifact_url": "s3://b/adapters/sql/"}]}, "adapter_components",
         "s3://bucket/key.tar.gz"),
        ({**IC, "adapter_components": [{"name": "sql"}]}, "adapter_components", "exactly name, artifact_url"),
        ({**IC, "adapter_components": "sql"}, "adapter_components", "must be a JSON list"),
        # Serverless limits.
        ({**SERVERLESS, "serverless_memory_mb": 1500}, "serverless_memory_mb", "1024, 2048, 3072, 4096, 5120, 6144"),
        ({**SERVERLESS, "serverless_max_concurrency": 201}, "serverless_max_concurrency", "1..200"),
        ({**SERVERLESS, "serverless_provisioned_concurrency": 6}, "serverless_provisioned_concurrency",
         "serverless_max_concurrency (5)"),
        ({"endpoint_mode": "serverless"}, "model_size_mb", "give its unpacked size"),
        ({"endpoint_mode": "serverless", "model_size_mb": 4800}, "endpoint_mode", "5 GB of disk"),
        ({"endpoint_mode": "serverless", "model_size_mb": 3000, "serverless_memory_mb": 2048},
         "serverless_memory_mb", "set serverless_memory_mb to 3072 or more"),
    ],
)
def test_mode_combinations_aws_rejects_are_refused(context: dict[str, object], key: str, fragment: str) -> None:
    with pytest.raises(ContextError) as caught:
        DeploymentSettings.from_mapping(context)
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_mode_defaults() -> None:
    plain = DeploymentSettings.from_mapping(IC)
    assert (plain.components.copy_count, plain.components.min_copies, plain.components.max_copies) == (1, 1, 2)
    assert plain.scaling.min_capacity == 1 and plain.base_component == "lora-endpoint-base"
    # scale_to_zero moves both floors to zero; the CLI's strings are read as booleans and JSON.
    zero = DeploymentSettings.from_mapping({**IC, "scale_to_zero": "true", "max_capacity": "3",
                                            "adapter_components": '[{"name": "sql", "artifact_url": '
                                                                  '"s3://b/adapters/sql.tar.gz"}]'})
    assert (zero.components.scale_to_zero, zero.components.min_copies, zero.scaling.min_capacity) == (True, 0, 0)
    assert zero.components.max_copies == 3
    assert [a.name for a in zero.components.adapters] == ["sql"]
    serverless = DeploymentSettings.from_mapping(SERVERLESS)
    assert serverless.image_uri == ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-inference:"
                                    "2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04")
    assert (serverless.serverless.memory_mb, serverless.serverless.max_concurrency) == (6144, 5)


def test_context_error_is_a_value_error() -> None:
    assert issubclass(ContextError, ValueError)


def test_defaults() -> None:
    settings = DeploymentSettings.from_mapping({})
    assert settings.region == "us-east-1"
    assert settings.account == ""
    assert settings.endpoint.instance_type == "ml.g5.2xlarge"
    assert settings.endpoint.model_data.kind is ModelDataKind.STACK_BUCKET
    assert settings.scaling.scaling_metric == "concurrency"
    assert settings.api.auth == "iam"
    assert settings.image_uri == "763104351884.dkr.ecr.us-east-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"
    # The generation budget sits under the API timeout by default.
    assert settings.endpoint.handler_env == {handler_config.ENV_TIME_BUDGET_S: "25"}


def test_metric_checks_lift_with_the_handlers_metrics_off() -> None:
    settings = DeploymentSettings.from_mapping({"handler": {"metrics": "off", "max_queue": 16,
                                                            "metrics_interval_s": 600}})
    assert settings.endpoint.handler_settings.metrics == "off"
    below = DeploymentSettings.from_mapping({"alarm_queue_depth": 8, "handler": {"max_queue": 16}})
    assert below.alarms.queue_depth == 8


def test_cli_strings_are_coerced() -> None:
    # GIVEN values as `-c key=value` delivers them (strings)
    settings = DeploymentSettings.from_mapping({
        "min_capacity": "2", "max_capacity": "5", "instance_count": "2", "scaling_target": "6.5",
        "handler": '{"dtype": "bfloat16", "max_new_tokens": 2048}', "vpc_subnet_ids": "subnet-a, subnet-b",
        "vpc_security_group_ids": "sg-0123456789abcdef0",
    })
    # THEN they arrive typed
    assert (settings.scaling.min_capacity, settings.scaling.max_capacity) == (2, 5)
    assert settings.scaling.scaling_target == 6.5
    assert settings.endpoint.vpc_subnet_ids == ("subnet-a", "subnet-b")
    assert settings.endpoint.handler_env[handler_config.ENV_DTYPE] == "bfloat16"
    assert settings.endpoint.handler_env[handler_config.ENV_MAX_NEW_TOKENS] == "2048"


def test_model_data_kinds(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"")
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "serving.properties").write_text("engine=Python\n")
    cases = {
        "s3://b/k/model.tar.gz": ModelDataKind.S3_ARCHIVE,
        "s3://b/prefix/": ModelDataKind.S3_PREFIX,
        str(archive): ModelDataKind.LOCAL_ARCHIVE,
        str(tmp_path / "tree"): ModelDataKind.LOCAL_FOLDER,
        "": ModelDataKind.STACK_BUCKET,
    }
    for value, kind in cases.items():
        assert DeploymentSettings.from_mapping({"model_data": value}).endpoint.model_data.kind is kind, value


def test_known_keys_cover_every_documented_key() -> None:
    keys = known_keys()
    readme = doc("deploy")
    for key in ("model_data", "instance_type", "min_capacity", "max_capacity", "region", "account", "api_auth",
                "alarm_email", "alarm_error_5xx_rate_pct", "handler", "scaling_metric", "network_isolation",
                "endpoint_mode", "scale_to_zero", "copy_count", "min_copies", "max_copies", "ic_accelerators",
                "ic_min_memory_mb", "adapter_components", "serverless_memory_mb", "serverless_max_concurrency",
                "serverless_provisioned_concurrency", "model_size_mb"):
        assert key in keys
    # Every key the app reads is in the README's context-key docs.
    for key in keys:
        assert f"`{key}`" in readme, f"README deploy section does not document {key}"


def _run_app(context: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps(context), "CDK_OUTDIR": str(tmp_path / "out")}
    return subprocess.run([sys.executable, "-m", "cdk.app"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_prints_the_error_without_a_trace(tmp_path: Path) -> None:
    # WHEN the app runs as `cdk synth` runs it, with a bad key
    result = _run_app({"min_capacity": 4, "max_capacity": 2}, tmp_path)
    # THEN it exits non-zero with one line naming the key, and no Python traceback
    assert result.returncode == 2
    assert "error: context key 'min_capacity'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "out").glob("*.template.json"))
