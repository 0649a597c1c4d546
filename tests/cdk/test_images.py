"""The checked-in LMI image table matches the sagemaker package's bundled config, and resolves offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdk.components.images import (
    AMI_FOR_CUDA_MAJOR,
    HF_CPU_TABLE_PATH,
    PINNED_VERSION,
    hf_cpu_table_from_config,
    load_table,
    table_from_config,
)
from scripts.gen_image_table import bundled_config_path


def test_table_matches_bundled_sagemaker_config() -> None:
    path = bundled_config_path()
    if path is None:
        pytest.skip("sagemaker-core is not installed (pip install --no-deps sagemaker-core); the check needs "
                    "its bundled image_uri_config/djl-lmi.json")
    expected = table_from_config(json.loads(path.read_text(encoding="utf-8")), PINNED_VERSION)
    table = load_table()
    assert table.tag == expected["tag"]
    assert table.repository == expected["repository"]
    assert table.registries == expected["registries"]


def test_pinned_tag_is_full_and_cuda13() -> None:
    table = load_table()
    assert table.tag == "0.38.0-lmi29.0.0-cu130"
    assert table.cuda_major == 13
    assert table.inference_ami_version == "al2023-ami-sagemaker-inference-gpu-4-1"


def test_uri_per_region() -> None:
    table = load_table()
    assert table.uri("eu-west-1") == "763104351884.dkr.ecr.eu-west-1.amazonaws.com/djl-inference:0.38.0-lmi29.0.0-cu130"
    assert table.uri("af-south-1").startswith("626614931356.")
    assert table.repository_arn("us-west-2") == "arn:aws:ecr:us-west-2:763104351884:repository/djl-inference"
    with pytest.raises(KeyError):
        table.uri("xx-nowhere-1")


def test_ami_values_are_in_the_cloudformation_enum() -> None:
    schemas = pytest.importorskip("cfnlint").__path__[0] + "/data/schemas"
    providers = json.loads(Path(f"{schemas}/providers/us-east-1.json").read_text(encoding="utf-8"))
    resource_file = Path(f"{schemas}/resources/{providers['AWS::SageMaker::EndpointConfig']}.json")
    resource = json.loads(resource_file.read_text(encoding="utf-8"))
    allowed = resource["definitions"]["ProductionVariant"]["properties"]["InferenceAmiVersion"]["enum"]
    assert set(AMI_FOR_CUDA_MAJOR.values()) <= set(allowed)


def test_hf_cpu_table_matches_bundled_sagemaker_config() -> None:
    path = bundled_config_path()
    if path is None:
        pytest.skip("sagemaker-core is not installed (pip install --no-deps sagemaker-core); the check needs "
                    "its bundled image_uri_config/huggingface.json")
    expected = hf_cpu_table_from_config(json.loads(path.with_name("huggingface.json").read_text(encoding="utf-8")))
    table = load_table(HF_CPU_TABLE_PATH)
    assert (table.framework, table.repository, table.tag) == (expected["framework"], expected["repository"],
                                                              expected["tag"])
    assert table.registries == expected["registries"]


def test_hf_cpu_tag_is_pinned_in_full_and_needs_no_gpu_ami() -> None:
    table = load_table(HF_CPU_TABLE_PATH)
    # image_uris.retrieve's rule: <torch>-transformers<version>-cpu-<py>-<container version>
    assert table.tag == "2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04"
    assert table.uri("us-west-2") == (
        "763104351884.dkr.ecr.us-west-2.amazonaws.com/huggingface-pytorch-inference:"
        "2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04")
    assert table.inference_ami_version is None
