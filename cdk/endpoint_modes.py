"""Endpoint modes besides today's variant: inference components (with scale to zero) and serverless.

- ``variant`` (the default): one production variant runs the model; Application Auto Scaling sets its
  instance count.
- ``inference_components``: the endpoint config names no model; SageMaker's managed instance scaling
  keeps ``min_capacity..max_capacity`` instances, a base inference component runs the package and one
  adapter inference component per ``adapter_components`` entry serves an adapter on it. Application Auto
  Scaling sets the base component's copy count; with ``scale_to_zero`` both go down to 0.
- ``serverless``: SageMaker Serverless Inference on CPU with the Hugging Face PyTorch container and the
  package's ``code/inference.py``; SageMaker scales it (to zero as well) by itself.

The AWS limits this module relies on, and where they come from:

- Serverless memory sizes 1024-6144 MB in 1 GB steps, ``MaxConcurrency`` 1-200, ``ProvisionedConcurrency``
  at most ``MaxConcurrency``: the API reference, ``ProductionVariantServerlessConfig``.
- "Regardless of the memory size you choose, your serverless endpoint has 5 GB of ephemeral disk
  storage", "the memory size should be at least as large as your model size", and the features
  Serverless Inference does not support (GPUs, VPC configuration, network isolation, data capture,
  multiple production variants, ...): the SageMaker developer guide, "Serverless Inference"
  (``serverless-endpoints.md`` in awsdocs/amazon-sagemaker-developer-guide).
- Serverless requests: 4 MB payload, 60 s per invocation (../shared/CONTRACTS.md section 3).
- An inference component cannot be created with ``CopyCount`` 0, and real-time endpoints scale to zero
  only through inference components (CONTRACTS.md section 3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cdk.errors import ContextError
from cdk.errors import require as _require
from cdk.model_data import ModelData, ModelDataKind, package_size

__all__ = [
    "COMPONENTS", "MODES", "MODE_KEYS", "SERVERLESS", "VARIANT", "AdapterComponent", "InferenceComponentSettings",
    "ServerlessSettings", "base_component_name", "package_bytes_for", "serverless_fit",
]

MODES = ("variant", "inference_components", "serverless")
VARIANT, COMPONENTS, SERVERLESS = MODES

# CloudFormation's pattern for inference component names (AWS::SageMaker::InferenceComponent).
COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
BASE_SUFFIX = "-base"
RESERVED_ADAPTER = "base"
"""The handler reads an adapter named ``base`` as "no adapter"; an adapter component cannot take it."""

SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_DISK_BYTES = 5 * 10**9
SERVERLESS_MAX_CONCURRENCY = 200
MIB = 1 << 20


def base_component_name(endpoint_name: str) -> str:
    """The base inference component's name: the endpoint's plus ``-base``."""
    return f"{endpoint_name}{BASE_SUFFIX}"


@dataclass(frozen=True)
class AdapterComponent:
    """One adapter inference component: its name (what callers select) and its ``.tar.gz`` in S3."""

    name: str
    artifact_url: str

    def __post_init__(self) -> None:
        _require(
            COMPONENT_NAME.match(self.name) is not None,
            "adapter_components",
            f"adapter name {self.name!r} must be 1-63 letters, digits and hyphens (an inference component name)",
        )
        _require(self.name.lower() != RESERVED_ADAPTER, "adapter_components",
                 f"adapter name {self.name!r} is reserved: the handler reads it as the base model")
        bucket, _, key = self.artifact_url.removeprefix("s3://").partition("/")
        _require(
            self.artifact_url.startswith("s3://") and bool(bucket) and key.endswith(".tar.gz") and key != ".tar.gz",
            "adapter_components",
            f"adapter {self.name!r}: artifact_url must be s3://bucket/key.tar.gz (a .tar.gz of the adapter "
            f"folder), got {self.artifact_url!r}",
        )

    @property
    def bucket(self) -> str:
        return self.artifact_url.removeprefix("s3://").partition("/")[0]

    @property
    def key(self) -> str:
        return self.artifact_url.removeprefix("s3://").partition("/")[2]


@dataclass(frozen=True)
class InferenceComponentSettings:
    """The base component's copies and compute, its copy-count scaling, and the adapter components."""

    scale_to_zero: bool = False
    copy_count: int = 1
    """Copies the base component is created with (AWS refuses 0 at create, even with scale to zero)."""
    min_copies: int = 1
    max_copies: int = 2
    accelerators: int = 1
    """GPUs each copy reserves (``NumberOfAcceleratorDevicesRequired``)."""
    min_memory_mb: int = 1024
    """Host memory each copy reserves (``MinMemoryRequiredInMb``): a scheduling reservation, not a limit."""
    adapters: tuple[AdapterComponent, ...] = ()

    def __post_init__(self) -> None:
        _require(self.copy_count >= 1, "copy_count",
                 f"must be at least 1, got {self.copy_count}: SageMaker refuses to create an inference component "
                 "with CopyCount 0 (with scale_to_zero it scales down to 0 after it is created)")
        _require(1 <= self.max_copies <= 1000, "max_copies", f"must be 1..1000, got {self.max_copies}")
        _require(self.min_copies >= 0, "min_copies", f"must not be negative, got {self.min_copies}")
        if self.scale_to_zero:
            _require(self.min_copies == 0, "min_copies",
                     f"scale_to_zero=true scales copies down to 0: min_copies must be 0, got {self.min_copies}")
        else:
            _require(self.min_copies >= 1, "min_copies",
                     "0 copies needs scale_to_zero=true (the step policy that scales back up from zero)")
        _require(self.min_copies <= self.copy_count <= self.max_copies, "copy_count",
                 f"must lie within min_copies..max_copies ({self.min_copies}..{self.max_copies}), "
                 f"got {self.copy_count}")
        _require(1 <= self.accelerators <= 8, "ic_accelerators", f"must be 1..8, got {self.accelerators}")
        _require(self.min_memory_mb >= 128, "ic_min_memory_mb",
                 f"must be at least 128 (CloudFormation's minimum), got {self.min_memory_mb}")
        names = [adapter.name for adapter in self.adapters]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        _require(not duplicates, "adapter_components", f"adapter names must be unique, repeated: {duplicates}")


@dataclass(frozen=True)
class ServerlessSettings:
    """``ServerlessConfig`` and the package size it is checked against."""

    memory_mb: int = 6144
    max_concurrency: int = 5
    provisioned_concurrency: int = 0
    """0: none (every instance starts on demand)."""

    def __post_init__(self) -> None:
        _require(self.memory_mb in SERVERLESS_MEMORY_MB, "serverless_memory_mb",
                 f"must be one of {', '.join(map(str, SERVERLESS_MEMORY_MB))} (AWS's serverless sizes), "
                 f"got {self.memory_mb}")
        _require(1 <= self.max_concurrency <= SERVERLESS_MAX_CONCURRENCY, "serverless_max_concurrency",
                 f"must be 1..{SERVERLESS_MAX_CONCURRENCY}, got {self.max_concurrency}")
        _require(0 <= self.provisioned_concurrency <= self.max_concurrency, "serverless_provisioned_concurrency",
                 f"must be 0 (none)..serverless_max_concurrency ({self.max_concurrency}), "
                 f"got {self.provisioned_concurrency}")


def serverless_fit(package_bytes: int, memory_mb: int, source: str) -> None:
    """Refuse a package Serverless Inference cannot hold; ``source`` says where its size came from.

    The 5 GB disk is the tighter bound (it is less than the largest memory size), then the memory chosen.
    Both are necessary, not sufficient: the weights can take more memory than disk (a bfloat16 checkpoint
    loaded as float32 doubles), and Python, torch and the toolkit need memory too.
    """
    size_mb = package_bytes / MIB
    _require(
        package_bytes <= SERVERLESS_DISK_BYTES,
        "endpoint_mode",
        f"the package is {size_mb:,.0f} MB ({source}): too large for serverless, whose endpoints have 5 GB of "
        f"disk, at most {SERVERLESS_MEMORY_MB[-1]} MB of memory and no GPU; deploy it with endpoint_mode=variant "
        "or inference_components",
    )
    fits = next(size for size in SERVERLESS_MEMORY_MB if package_bytes <= size * MIB)
    _require(
        package_bytes <= memory_mb * MIB,
        "serverless_memory_mb",
        f"{memory_mb} MB is less than the package ({size_mb:,.0f} MB, {source}); AWS: memory should be at least "
        f"the model's size: set serverless_memory_mb to {fits} or more",
    )


# Keys that mean something in some endpoint modes only: set in another mode, they are refused rather than
# silently ignored. (scale_to_zero has its own message; data capture, VPC and network isolation are
# checked by EndpointSettings with AWS's reason.)
_INSTANCE_KEYS = ("instance_type", "instance_count", "min_capacity", "max_capacity", "scaling_metric",
                  "scaling_target", "scale_in_cooldown_s", "scale_out_cooldown_s", "model_data_download_timeout_s",
                  "startup_health_check_timeout_s", "alarm_gpu_memory_pct", "alarm_cpu_pct")
MODE_KEYS: dict[str, tuple[str, ...]] = {
    **{key: (VARIANT, COMPONENTS) for key in _INSTANCE_KEYS},
    **{key: (COMPONENTS,) for key in ("copy_count", "min_copies", "max_copies", "ic_accelerators",
                                       "ic_min_memory_mb", "adapter_components")},
    **{key: (SERVERLESS,) for key in ("serverless_memory_mb", "serverless_max_concurrency",
                                       "serverless_provisioned_concurrency", "model_size_mb")},
}


def package_bytes_for(mode: str, model_data: ModelData, size_mb: int) -> tuple[int | None, str]:
    """The package's unpacked size for the serverless checks: read from a local package, else ``model_size_mb``."""
    if mode != SERVERLESS:
        return None, ""
    local = model_data.kind in (ModelDataKind.LOCAL_FOLDER, ModelDataKind.LOCAL_ARCHIVE)
    if local:
        # One owner per value: a local package says its own size.
        _require(size_mb == 0, "model_size_mb",
                 "model_data is a local package, whose manifest.json gives its size: drop model_size_mb")
        try:
            measured = package_size(model_data)
        except ValueError as err:
            raise ContextError("model_data", str(err)) from None
        return measured, "the package's manifest.json"
    _require(size_mb >= 0, "model_size_mb", f"must not be negative, got {size_mb}")
    return (size_mb << 20 if size_mb else None), "model_size_mb"
