"""Downloading an ``s3://bucket/prefix`` to a local folder, once, within bounds (boto3, imported lazily).

The base model (``LORA_BASE_MODEL=s3://...``) and adapters registered or fetched at run time come this
way. Every object lands inside the destination folder (a key such as ``../x`` is refused), a marker file
records a finished download so a restart does not fetch it again, and ``max_bytes`` / ``max_files``
stop a prefix that holds far more than it should before it fills the disk.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("lora_endpoint.handler")

MARKER = ".lora-endpoint-complete"


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix/")`` (an empty prefix stays empty)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"{uri!r} is not an s3:// URI")
    bucket, _, prefix = uri[len("s3://") :].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket")
    return bucket, prefix.rstrip("/") + "/" if prefix.strip("/") else ""


def download_prefix(uri: str, dest: Path, *, error: type[Exception], missing: type[Exception] | None = None,
                    max_bytes: int | None = None, max_files: int | None = None, what: str = "object") -> int:
    """Download every object under ``uri`` into ``dest`` unless a finished download of it is there.

    Returns the number of files fetched (0 when it was there already). Raises ``error`` with a message
    naming the problem: bad URI, nothing under the prefix (``missing`` when given), too many files or
    bytes, a key that would land outside ``dest``, or the S3 call failing.
    """
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        bucket, prefix = split_uri(uri)
    except ValueError as err:
        raise error(str(err)) from None
    marker = dest / MARKER
    if marker.is_file() and marker.read_text() == uri:
        return 0
    client = boto3.client("s3")
    objects: list[tuple[str, Path]] = []
    total = 0
    root = dest.resolve()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue
                target = (dest / relative).resolve()
                if not target.is_relative_to(root):
                    raise error(f"{what} {obj['Key']!r} under {uri} would land outside {dest}")
                total += int(obj.get("Size", 0))
                objects.append((obj["Key"], target))
                if max_files is not None and len(objects) > max_files:
                    raise error(f"{uri} holds more than {max_files} files")
                if max_bytes is not None and total > max_bytes:
                    raise error(f"{uri} holds more than {max_bytes} bytes")
        if not objects:
            raise (missing or error)(f"no objects under {uri}")
        for key, target in objects:
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as err:
        raise error(f"cannot read {uri}: {err}") from None
    marker.write_text(uri)
    log.info("downloaded %d files (%d bytes) from %s to %s", len(objects), total, uri, dest)
    return len(objects)
