"""Where the model artifact comes from: the ``model_data`` context key, parsed into one of four kinds.

- ``s3://bucket/key/model.tar.gz``: a compressed archive (``ModelDataUrl``);
- ``s3://bucket/prefix/``: an uncompressed tree (``ModelDataSource`` ``S3Prefix``, LMI's advice for big models);
- a local ``model.tar.gz`` or folder: uploaded as a CDK asset, keyed by content hash (a folder is packed
  into a deterministic ``model.tar.gz`` at synth time);
- empty: the ``model/`` prefix of the stack's own artifacts bucket (upload there before the first deploy).

``package_size`` reads how large a local package is unpacked (for the serverless mode's limits).
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from lora_endpoint.contract.manifest import MANIFEST, parse_manifest, read_manifest

DEFAULT_PREFIX = "model/"


class ModelDataKind(Enum):
    """How SageMaker reads the artifact and who uploads it."""

    S3_ARCHIVE = "s3_archive"
    S3_PREFIX = "s3_prefix"
    LOCAL_ARCHIVE = "local_archive"
    LOCAL_FOLDER = "local_folder"
    STACK_BUCKET = "stack_bucket"


@dataclass(frozen=True)
class ModelData:
    """A parsed ``model_data`` value."""

    kind: ModelDataKind
    bucket: str = ""
    key: str = ""
    """Object key (archive) or key prefix ending in ``/`` (prefix); empty for local paths."""
    path: str = ""
    """Absolute local path, for the two local kinds."""

    @property
    def compressed(self) -> bool:
        """Whether SageMaker gets a ``model.tar.gz`` (else an uncompressed prefix)."""
        return self.kind in (ModelDataKind.S3_ARCHIVE, ModelDataKind.LOCAL_ARCHIVE, ModelDataKind.LOCAL_FOLDER)


def parse_model_data(value: str, base_dir: Path | None = None) -> ModelData:
    """Parse ``model_data``; ``ValueError`` with a message a user can act on."""
    value = value.strip()
    if not value:
        return ModelData(kind=ModelDataKind.STACK_BUCKET, key=DEFAULT_PREFIX)
    if value.startswith("s3://"):
        return _parse_s3(value)
    if "://" in value:
        raise ValueError(f"must be an s3:// URI or a local path, got {value!r}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if path.is_dir():
        if not any(child.is_file() for child in path.iterdir()):
            raise ValueError(f"folder {str(path)!r} has no regular file at its root (LMI needs one)")
        return ModelData(kind=ModelDataKind.LOCAL_FOLDER, path=str(path.resolve()))
    if path.is_file():
        if not path.name.endswith(".tar.gz"):
            raise ValueError(f"a local file must be a .tar.gz archive, got {str(path)!r}")
        return ModelData(kind=ModelDataKind.LOCAL_ARCHIVE, path=str(path.resolve()))
    raise ValueError(f"no such file or folder: {str(path)!r}")


def _parse_s3(uri: str) -> ModelData:
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"s3:// URI has no bucket: {uri!r}")
    if not key:
        raise ValueError(
            f"s3:// URI needs a key: s3://{bucket}/<key>/model.tar.gz or s3://{bucket}/<prefix>/, got {uri!r}"
        )
    if key.endswith(".tar.gz"):
        return ModelData(kind=ModelDataKind.S3_ARCHIVE, bucket=bucket, key=key)
    if key.endswith("/"):
        return ModelData(kind=ModelDataKind.S3_PREFIX, bucket=bucket, key=key)
    raise ValueError(
        f"s3:// URI must end in .tar.gz (an archive) or / (an uncompressed prefix), got {uri!r}"
    )


def package_size(model_data: ModelData) -> int | None:
    """Bytes of a local package once unpacked, from its ``manifest.json``; None for model data in S3.

    A folder without a manifest is measured file by file. An archive is read only up to its first
    member, where ``lora_endpoint.packaging`` puts the manifest: a ``ValueError`` when it is not there.
    """
    if model_data.kind is ModelDataKind.LOCAL_FOLDER:
        root = Path(model_data.path)
        if (root / MANIFEST).is_file():
            return read_manifest(root / MANIFEST).total_bytes
        return sum(path.stat().st_size for path in root.rglob("*") if path.is_file() and not path.is_symlink())
    if model_data.kind is ModelDataKind.LOCAL_ARCHIVE:
        try:
            with tarfile.open(model_data.path, "r|gz") as tar:
                first = tar.next()
                handle = tar.extractfile(first) if first is not None and first.isfile() else None
                if first is None or first.name.removeprefix("./") != MANIFEST or handle is None:
                    raise ValueError(f"{model_data.path!r} does not start with {MANIFEST} (it was not built by "
                                     "lora_endpoint.packaging): its size cannot be read, set model_size_mb")
                return parse_manifest(handle.read()).total_bytes
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"cannot read {model_data.path!r} as a .tar.gz ({err})") from None
    return None
