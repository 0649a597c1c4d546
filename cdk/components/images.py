"""The container images, resolved offline from checked-in region -> registry tables.

- DJL LMI (GPU; the ``variant`` and ``inference_components`` modes): ``lmi_image_table.json``, generated
  by ``scripts/gen_image_table.py`` from the image config that the ``sagemaker-core`` package bundles
  (``sagemaker/core/image_uri_config/djl-lmi.json``, the file ``sagemaker.core.image_uris.retrieve("djl-lmi",
  ...)`` reads).
- Hugging Face PyTorch inference, CPU (the ``serverless`` mode): ``hf_cpu_image_table.json``, built by
  ``hf_cpu_table_from_config`` from the same package's ``image_uri_config/huggingface.json`` with the tag
  rule of ``image_uris.retrieve("huggingface", ...)``; write its result as JSON (indent 2) to regenerate.

Tests check that both tables agree with the bundled configs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE_PATH = Path(__file__).with_name("lmi_image_table.json")
FRAMEWORK = "djl-lmi"
PINNED_VERSION = "0.38.0"
"""The LMI release this project pins (the tag is pinned in full, never an alias such as ``latest``)."""

HF_CPU_TABLE_PATH = Path(__file__).with_name("hf_cpu_image_table.json")
HF_FRAMEWORK = "huggingface"
HF_PINNED_VERSION = "5.5.3"
"""transformers version of the pinned Hugging Face inference image: its Dockerfile (aws/deep-learning-containers,
``huggingface/pytorch/inference/docker/2.6/py3/Dockerfile.cpu``) installs transformers 5.5.3, peft 0.18.1 and
the inference toolkit from git (2.6.0 on PyPI does not import with transformers 5)."""
HF_BASE_FRAMEWORK = "pytorch2.6.0"

# CUDA 13 images need the AL2023 inference AMI (NVIDIA driver 580); older CUDA runs on the default AMI.
# The allowed values are the CloudFormation enum for ProductionVariant.InferenceAmiVersion.
AMI_FOR_CUDA_MAJOR = {13: "al2023-ami-sagemaker-inference-gpu-4-1"}


@dataclass(frozen=True)
class ImageTable:
    """Where one pinned LMI tag lives in each region."""

    framework: str
    version: str
    repository: str
    tag: str
    registries: dict[str, str]

    def uri(self, region: str, url_suffix: str = "amazonaws.com") -> str:
        """The full image URI in ``region``; ``KeyError`` when the table has no registry there."""
        return f"{self.registries[region]}.dkr.ecr.{region}.{url_suffix}/{self.repository}:{self.tag}"

    def repository_arn(self, region: str, partition: str = "aws") -> str:
        """The ECR repository ARN the execution role may pull from."""
        return f"arn:{partition}:ecr:{region}:{self.registries[region]}:repository/{self.repository}"

    @property
    def cuda_major(self) -> int:
        """CUDA major version from a tag such as ``0.38.0-lmi29.0.0-cu130`` (130 -> 13)."""
        match = re.search(r"-cu(\d+)$", self.tag)
        if not match:
            raise ValueError(f"LMI tag {self.tag!r} carries no -cuNNN suffix")
        return int(match.group(1)) // 10

    @property
    def inference_ami_version(self) -> str | None:
        """The ``InferenceAmiVersion`` the image needs, or None for the platform default (and CPU images)."""
        if re.search(r"-cu\d+$", self.tag) is None:
            return None
        return AMI_FOR_CUDA_MAJOR.get(self.cuda_major)


def table_from_config(config: dict[str, Any], version: str = PINNED_VERSION) -> dict[str, Any]:
    """Build the checked-in table from the sagemaker package's ``djl-lmi.json`` content."""
    entry = config["versions"][version]
    return {
        "framework": FRAMEWORK,
        "version": version,
        "repository": entry["repository"],
        "tag": entry["tag_prefix"],
        "registries": dict(sorted(entry["registries"].items())),
    }


def hf_cpu_table_from_config(
    config: dict[str, Any], version: str = HF_PINNED_VERSION, base_framework: str = HF_BASE_FRAMEWORK
) -> dict[str, Any]:
    """The CPU inference image from the sagemaker package's ``huggingface.json`` content.

    The tag follows ``image_uris.retrieve``: ``<torch>-transformers<version>-cpu-<py>-<container version>``,
    e.g. ``2.6.0-transformers5.5.3-cpu-py312-ubuntu22.04``.
    """
    entry = config["inference"]["versions"][version][base_framework]
    torch_version = base_framework.removeprefix("pytorch")
    tag = f"{torch_version}-transformers{version}-cpu-{entry['py_versions'][0]}-{entry['container_version']['cpu']}"
    return {
        "framework": HF_FRAMEWORK,
        "version": version,
        "repository": entry["repository"],
        "tag": tag,
        "registries": dict(sorted(entry["registries"].items())),
    }


@lru_cache(maxsize=2)
def load_table(path: Path = TABLE_PATH) -> ImageTable:
    """Read the checked-in table."""
    raw = json.loads(path.read_text(encoding="utf-8"))
    return ImageTable(
        framework=raw["framework"],
        version=raw["version"],
        repository=raw["repository"],
        tag=raw["tag"],
        registries=dict(raw["registries"]),
    )
