"""An adapter folder made ready for an adapter inference component: checked, packed, uploaded.

The checks are the ones the handler runs when it loads an adapter and ``lora_endpoint.packaging build`` runs
before it packages one (``lora_endpoint.handler.adapters.read_adapter``,
``lora_endpoint.handler.adapter_weights``; against a local
base model's module shapes and names when one is given), so a broken adapter is refused here instead of
failing its inference component minutes later. The archive is the folder's files at the root of a
deterministic ``.tar.gz`` (what SageMaker unpacks for the container), uploaded under its content hash
(``s3://bucket/prefix/<sha256[:16]>/adapter.tar.gz``, skipped when already there): a changed adapter
always gets a new ``ArtifactUrl``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_endpoint.contract.manifest import Entry
from lora_endpoint.handler import adapter_checks
from lora_endpoint.handler.adapter_weights import check_adapter_weights, tensor_shapes
from lora_endpoint.handler.adapters import SAFETENSORS_WEIGHTS, AdapterError, AdapterInfo, check_unmerged, read_adapter
from lora_endpoint.packaging.archive import write_tar_gz
from lora_endpoint.packaging.base import is_pickle, list_files, read_base_model
from lora_endpoint.packaging.config import PackageError, parse_s3_uri
from lora_endpoint.packaging.progress import progress_bar
from lora_endpoint.packaging.upload import key_prefix, transfer_config, upload_file

ADAPTER_ARCHIVE = "adapter.tar.gz"


class ArtifactError(Exception):
    """The adapter folder cannot be served, or the upload target is not usable; the message says why."""


@dataclass(frozen=True)
class PackedAdapter:
    info: AdapterInfo
    archive: Path
    sha256: str


def check_adapter(name: str, folder: Path, *, base_model: Path | None = None,
                  max_lora_rank: int | None = None) -> AdapterInfo:
    """The handler's checks on ``folder``; with ``base_model`` also what it must agree on with that base
    (name, target modules, shapes, vocabulary), as ``lora_endpoint.packaging build`` and the endpoint check it."""
    try:
        info = read_adapter(name, folder)
        check_unmerged(info)
        if max_lora_rank is not None:
            adapter_checks.check_rank(info, max_lora_rank, flag="--max-lora-rank")
        base = read_base_model(base_model) if base_model is not None else None
        if base is not None:
            adapter_checks.check_base_name(info, base.name_hints, base_path=base.path,
                                           served=f"--base-model {str(base_model)!r}")
            adapter_checks.check_target_modules(info, base.module_names)
            adapter_checks.check_vocab(info, tensor_shapes(info.path / SAFETENSORS_WEIGHTS), base.vocab_size)
        check_adapter_weights(info, base.module_shapes if base is not None else None)
    except (AdapterError, PackageError, ValueError) as err:  # ValueError: an unreadable safetensors header
        raise ArtifactError(str(err)) from None
    return info


def pack_adapter(info: AdapterInfo, work_dir: Path) -> PackedAdapter:
    """The adapter's files (hidden files and pickles left out) at the root of ``work_dir/adapter.tar.gz``."""
    owner = f"adapter {info.name!r}"
    try:
        names = [name for name in list_files(info.path, owner=owner, follow_file_links=False) if not is_pickle(name)]
        entries = [Entry(name, source=info.path / name) for name in names]
        sizes = {name: (info.path / name).stat().st_size for name in names}
        archive = work_dir / ADAPTER_ARCHIVE
        with archive.open("wb") as out:
            digest = write_tar_gz(entries, sizes, out, workers=2)
    except (PackageError, OSError) as err:
        raise ArtifactError(f"{owner}: cannot pack {info.path}: {err}") from None
    return PackedAdapter(info, archive, digest)


def upload_adapter(packed: PackedAdapter, upload: str, s3: Any, *, kms_key_id: str | None = None,
                   progress: bool) -> str:
    """Upload the archive under ``upload`` (``s3://bucket/prefix``) keyed by its hash; the ``s3://`` URL."""
    try:
        bucket, prefix = parse_s3_uri(upload)
    except PackageError as err:
        raise ArtifactError(str(err)) from None
    key = f"{key_prefix(prefix, packed.sha256)}/{ADAPTER_ARCHIVE}"
    with progress_bar("uploading", packed.archive.stat().st_size, progress) as tick:
        upload_file(s3, packed.archive, bucket, key, packed.sha256, kms_key_id=kms_key_id, config=transfer_config(),
                    on_bytes=tick)
    return f"s3://{bucket}/{key}"
