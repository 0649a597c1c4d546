"""Upload an artifact to S3 under a content-hashed key, skipping what is already there.

A ``model.tar.gz`` goes to ``s3://bucket/prefix/<sha256[:16]>/model.tar.gz``; a ``--format dir`` tree to
``s3://bucket/prefix/<manifest sha256[:16]>/`` with ``manifest.json`` uploaded last, so a present
manifest means a complete tree. Every object carries its full sha256 in metadata (``content-sha256``)
and an S3 SHA-256 checksum; a new model always gets a new key, so an endpoint never sees a key change
under it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lora_endpoint.contract.manifest import MANIFEST
from lora_endpoint.packaging.config import ARCHIVE_NAME, parse_s3_uri
from lora_endpoint.packaging.progress import progress_bar

HASH_METADATA = "content-sha256"
KEY_HASH_CHARS = 16
MiB = 1 << 20


def transfer_config(*, threshold: int = 64 * MiB, chunk_size: int = 64 * MiB, concurrency: int = 10) -> Any:
    """boto3 ``TransferConfig`` for the managed (multipart, concurrent) upload."""
    from boto3.s3.transfer import TransferConfig

    return TransferConfig(multipart_threshold=threshold, multipart_chunksize=chunk_size,
                          max_concurrency=concurrency, use_threads=True)


def already_there(client: Any, bucket: str, key: str, sha256: str) -> bool:
    """True when ``key`` exists and its ``content-sha256`` metadata is ``sha256``."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound", "403"):
            return False
        raise
    return bool(head.get("Metadata", {}).get(HASH_METADATA) == sha256)


def upload_file(
    client: Any,
    path: Path,
    bucket: str,
    key: str,
    sha256: str,
    *,
    kms_key_id: str | None,
    config: Any,
    on_bytes: Callable[[int], object] | None = None,
) -> bool:
    """Managed upload of one file unless it is already there; return whether it was uploaded."""
    if already_there(client, bucket, key, sha256):
        if on_bytes is not None:
            on_bytes(path.stat().st_size)
        return False
    extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256", "Metadata": {HASH_METADATA: sha256}}
    if kms_key_id:
        extra.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=kms_key_id)
    client.upload_file(str(path), bucket, key, ExtraArgs=extra, Config=config, Callback=on_bytes)
    return True


def key_prefix(prefix: str, content_hash: str) -> str:
    """``prefix/<hash[:16]>`` (or just the hash part when the prefix is empty)."""
    short = content_hash[:KEY_HASH_CHARS]
    return f"{prefix}/{short}" if prefix else short


def upload_artifact(
    path: Path,
    content_hash: str,
    uri: str,
    *,
    manifest: dict[str, Any] | None = None,
    client: Any = None,
    kms_key_id: str | None = None,
    config: Any = None,
    progress: bool = True,
) -> str:
    """Upload a built artifact (file or tree) to ``uri``; return the ``s3://`` URI to use as model data."""
    bucket, prefix = parse_s3_uri(uri)
    if client is None:
        import boto3

        client = boto3.client("s3")
    config = config or transfer_config()
    root = key_prefix(prefix, content_hash)
    if path.is_file():
        key = f"{root}/{ARCHIVE_NAME}"
        with progress_bar("uploading", path.stat().st_size, progress) as tick:
            sent = upload_file(client, path, bucket, key, content_hash, kms_key_id=kms_key_id, config=config,
                               on_bytes=tick)
        _say(f"{'uploaded' if sent else 'already present, skipped'}: s3://{bucket}/{key}")
        return f"s3://{bucket}/{key}"
    if manifest is None:
        raise ValueError("uploading a tree needs its manifest")
    if already_there(client, bucket, f"{root}/{MANIFEST}", content_hash):
        _say(f"already present, skipped: s3://{bucket}/{root}/")
        return f"s3://{bucket}/{root}/"
    files = {item["path"]: item["sha256"] for item in manifest["files"]}
    total = sum(int(item["size"]) for item in manifest["files"])
    with progress_bar("uploading", total, progress) as tick, ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(upload_file, client, path / name, bucket, f"{root}/{name}", sha, kms_key_id=kms_key_id,
                        config=config, on_bytes=tick)
            for name, sha in sorted(files.items())
        ]
        count = sum(future.result() for future in futures)
    upload_file(client, path / MANIFEST, bucket, f"{root}/{MANIFEST}", content_hash, kms_key_id=kms_key_id,
                config=config)
    _say(f"uploaded {count} of {len(files)} files (the rest were already there) and {MANIFEST}: "
         f"s3://{bucket}/{root}/")
    return f"s3://{bucket}/{root}/"


def _say(message: str) -> None:
    print(message, file=sys.stderr)
