"""Canned sagemaker answers for botocore's Stubber, in the service model's output shapes (moto does not model
inference components): ``describe_inference_component`` and ``list_inference_components``."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

ENDPOINT = "lora-endpoint"
BASE = "lora-endpoint-base"
ARN = "arn:aws:sagemaker:us-east-1:123456789012"
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def described(name: str, status: str = "InService", *, base: str | None = None, artifact: str = "s3://b/a.tar.gz",
              endpoint: str = ENDPOINT, failure: str | None = None) -> dict[str, Any]:
    """A describe_inference_component answer: an adapter component with ``base``, else a base component."""
    spec: dict[str, Any] = (
        {"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": artifact}} if base else
        {"ModelName": "lora-model", "ComputeResourceRequirements": {"MinMemoryRequiredInMb": 1024,
                                                                     "NumberOfAcceleratorDevicesRequired": 1}})
    answer: dict[str, Any] = {
        "InferenceComponentName": name, "InferenceComponentArn": f"{ARN}:inference-component/{name}",
        "EndpointName": endpoint, "EndpointArn": f"{ARN}:endpoint/{endpoint}", "VariantName": "AllTraffic",
        "Specification": spec, "CreationTime": NOW, "LastModifiedTime": NOW, "InferenceComponentStatus": status}
    if base is None:
        answer["RuntimeConfig"] = {"DesiredCopyCount": 1, "CurrentCopyCount": 1}
    if failure:
        answer["FailureReason"] = failure
    return answer


def listed(*names: str) -> dict[str, Any]:
    return {"InferenceComponents": [
        {"InferenceComponentName": n, "InferenceComponentArn": f"{ARN}:inference-component/{n}",
         "EndpointName": ENDPOINT, "EndpointArn": f"{ARN}:endpoint/{ENDPOINT}", "VariantName": "AllTraffic",
         "InferenceComponentStatus": "InService", "CreationTime": NOW, "LastModifiedTime": NOW} for n in names]}
