"""Whether the SageMaker model runs with network isolation, decided from where the base model comes from.

With ``EnableNetworkIsolation`` the container has no network at all, while SageMaker still pulls the image
and downloads the model data into ``/opt/ml/model``. That is all the handler needs when the base model is
inside the package (``base/``) or at another local path. It is not enough for:

- an ``s3://`` base, which the handler downloads with boto3 at start. SageMaker's ``CreateModel`` could
  fetch it instead (``ContainerDefinition.AdditionalModelDataSources``), but CloudFormation's
  ``AWS::SageMaker::Model`` has no such property (cfn-lint 1.58's resource schema, aws-cdk-lib 2.275's
  ``CfnModel``), so this stack cannot ask for it;
- a Hugging Face Hub id, which transformers downloads from the Hub.
"""

from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cdk.model_data import ModelData, ModelDataKind
from lora_endpoint.contract import settings as handler_config

SETTINGS = ("auto", "true", "false")
BASE_OPTION = "base_model"
_SERVING_PROPERTIES = "serving.properties"


class BaseSource(Enum):
    """Where the handler finds its base model."""

    PACKAGE = "package"
    """No base named: ``base/`` (or the root) of the model data."""
    PATH = "path"
    """An absolute or ``./`` path in the container."""
    S3 = "s3"
    HUB = "hub"


def base_source(reference: str) -> BaseSource:
    """Classify a base model reference the way the handler resolves it (a bare name is a hub id)."""
    if not reference:
        return BaseSource.PACKAGE
    if reference.startswith("s3://"):
        return BaseSource.S3
    if reference.startswith(("/", ".")):
        return BaseSource.PATH
    return BaseSource.HUB


@dataclass(frozen=True)
class NetworkIsolation:
    """The decision, and (when off) the one-line reason synth prints."""

    enabled: bool
    reason: str = ""


def decide(setting: str, base_reference: str) -> NetworkIsolation:
    """``setting`` is ``auto``, ``true`` or ``false``; ``ValueError`` when ``true`` cannot load the base."""
    source = base_source(base_reference)
    needs_network = {
        BaseSource.S3: f"base model {base_reference!r} is downloaded by the handler at start (CloudFormation's "
        "AWS::SageMaker::Model cannot declare it as additional model data for SageMaker to fetch)",
        BaseSource.HUB: f"base model {base_reference!r} is a Hugging Face Hub id the container downloads "
        "(write ./name for a folder inside the package)",
    }.get(source)
    if setting == "false":
        return NetworkIsolation(False, "network_isolation=false was set")
    if needs_network is None:
        return NetworkIsolation(True)
    if setting == "true":
        raise ValueError(f"cannot be true: {needs_network}; bundle the base into the package instead")
    return NetworkIsolation(False, f"{needs_network}; bundle the base into the package to keep the container "
                                   "off the network")


def package_options(model_data: ModelData) -> dict[str, str] | None:
    """The ``option.*`` values of a local package's ``serving.properties`` (which win over the environment in
    the container); None where synth cannot know them: model data in S3, or an archive whose bundled
    ``base/`` comes before ``serving.properties`` (not decompressed at every synth) - then only that it
    names no ``base_model`` (its base is the bundled one) is known."""
    if model_data.kind is ModelDataKind.LOCAL_FOLDER:
        return handler_config.serving_options(Path(model_data.path) / _SERVING_PROPERTIES)
    if model_data.kind is ModelDataKind.LOCAL_ARCHIVE:
        return _archive_options(Path(model_data.path))
    return None


def _archive_options(path: Path) -> dict[str, str] | None:
    """Stream the archive up to ``serving.properties``, or stop at ``base/``.

    The packager sorts members, so ``base/`` (a bundled base, and then no ``option.base_model``) comes first
    and a multi-gigabyte base is not decompressed at every synth.
    """
    try:
        with tarfile.open(path, "r|gz") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if name == "base" or name.startswith("base/"):
                    return None
                if name == _SERVING_PROPERTIES and member.isfile():
                    handle = tar.extractfile(member)
                    data = handle.read(1 << 20) if handle is not None else b""
                    with tempfile.TemporaryDirectory() as tmp:
                        copy = Path(tmp) / _SERVING_PROPERTIES
                        copy.write_bytes(data)
                        return handler_config.serving_options(copy)
    except (tarfile.TarError, OSError, EOFError):
        return None  # not a readable package: SageMaker refuses it at load; nothing to decide from here
    return {}
