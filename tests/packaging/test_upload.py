"""Uploads against moto's S3: multipart, checksums, content-hashed keys, skip-if-present, SSE-KMS, trees."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_endpoint.packaging import BuildOptions, build
from lora_endpoint.packaging.cli import main
from lora_endpoint.packaging.upload import HASH_METADATA, transfer_config, upload_artifact

BUCKET = "models-bucket"
MiB = 1 << 20


@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Spy:
    """Wraps ``client.upload_file`` to record the keys actually sent."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        self._upload = client.upload_file
        client.upload_file = self

    def __call__(self, filename: str, bucket: str, key: str, **kwargs: Any) -> None:
        self.keys.append(key)
        self._upload(filename, bucket, key, **kwargs)


def _archive(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / "model.tar.gz"
    path.write_bytes(os.urandom(size))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_goes_multipart_to_a_content_hashed_key_with_checksums(s3: Any, tmp_path: Path) -> None:
    # GIVEN an 11 MiB archive and a 5 MiB multipart threshold: three parts
    path, sha = _archive(tmp_path, 11 * MiB)
    config = transfer_config(threshold=5 * MiB, chunk_size=5 * MiB, concurrency=3)
    uri = upload_artifact(path, sha, f"s3://{BUCKET}/models/support/", client=s3, config=config, progress=False)
    key = f"models/support/{sha[:16]}/model.tar.gz"
    assert uri == f"s3://{BUCKET}/{key}"
    head = s3.head_object(Bucket=BUCKET, Key=key, ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in three parts"
    assert head["Metadata"][HASH_METADATA] == sha
    assert "ChecksumSHA256" in head
    body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == sha


def test_single_part_upload_carries_the_files_sha256_checksum(s3: Any, tmp_path: Path) -> None:
    path, sha = _archive(tmp_path, 1000)
    upload_artifact(path, sha, f"s3://{BUCKET}/m", client=s3, progress=False)
    head = s3.head_object(Bucket=BUCKET, Key=f"m/{sha[:16]}/model.tar.gz", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(bytes.fromhex(sha)).decode()


def test_an_archive_already_there_is_not_uploaded_again(s3: Any, tmp_path: Path) -> None:
    path, sha = _archive(tmp_path, 2000)
    spy = Spy(s3)
    first = upload_artifact(path, sha, f"s3://{BUCKET}/m", client=s3, progress=False)
    second = upload_artifact(path, sha, f"s3://{BUCKET}/m", client=s3, progress=False)
    assert first == second
    assert spy.keys == [f"m/{sha[:16]}/model.tar.gz"], "the second call sent nothing"


def test_same_key_with_another_hash_is_uploaded(s3: Any, tmp_path: Path) -> None:
    path, sha = _archive(tmp_path, 2000)
    key = f"m/{sha[:16]}/model.tar.gz"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"partial", Metadata={HASH_METADATA: "0" * 64})
    upload_artifact(path, sha, f"s3://{BUCKET}/m", client=s3, progress=False)
    assert s3.head_object(Bucket=BUCKET, Key=key)["Metadata"][HASH_METADATA] == sha


def test_kms_key_is_passed_as_sse_kms(s3: Any, tmp_path: Path) -> None:
    key_id = boto3.client("kms", region_name="us-east-1").create_key()["KeyMetadata"]["KeyId"]
    path, sha = _archive(tmp_path, 6 * MiB)
    config = transfer_config(threshold=5 * MiB, chunk_size=5 * MiB)
    upload_artifact(path, sha, f"s3://{BUCKET}/enc", client=s3, kms_key_id=key_id, config=config, progress=False)
    head = s3.head_object(Bucket=BUCKET, Key=f"enc/{sha[:16]}/model.tar.gz")
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"].endswith(key_id)


def test_tree_upload_puts_every_file_then_the_manifest_and_skips_when_present(
    s3: Any, options_for: Callable[..., BuildOptions], tmp_path: Path
) -> None:
    # GIVEN a --format dir build
    result = build(options_for(format="dir", output=tmp_path / "tree"))
    spy = Spy(s3)
    # WHEN it is uploaded to a prefix
    uri = upload_artifact(result.path, result.content_hash, f"s3://{BUCKET}/trees", manifest=result.manifest,
                          client=s3, progress=False)
    root = f"trees/{result.content_hash[:16]}"
    # THEN every file is under the content-hashed prefix, byte-identical, and the manifest came last
    assert uri == f"s3://{BUCKET}/{root}/"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=root)["Contents"]}
    expected = {f"{root}/{f['path']}" for f in result.manifest["files"]} | {f"{root}/manifest.json"}
    assert listed == expected
    assert spy.keys[-1] == f"{root}/manifest.json"
    for item in result.manifest["files"]:
        body = s3.get_object(Bucket=BUCKET, Key=f"{root}/{item['path']}")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == item["sha256"]

    # WHEN it is uploaded again THEN nothing is sent
    spy.keys.clear()
    assert upload_artifact(result.path, result.content_hash, f"s3://{BUCKET}/trees", manifest=result.manifest,
                           client=s3, progress=False) == uri
    assert spy.keys == []

    # WHEN an upload was interrupted (no manifest, one file missing) THEN only what is missing is sent
    s3.delete_object(Bucket=BUCKET, Key=f"{root}/manifest.json")
    s3.delete_object(Bucket=BUCKET, Key=f"{root}/model.py")
    upload_artifact(result.path, result.content_hash, f"s3://{BUCKET}/trees", manifest=result.manifest,
                    client=s3, progress=False)
    assert spy.keys == [f"{root}/model.py", f"{root}/manifest.json"]


def test_cli_build_and_upload_prints_the_uri_last(
    s3: Any, tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["build", "--base-model", str(tiny_src / "base"), "--adapter", f"alpha={tiny_src / 'adapters/alpha'}",
                 "--output", str(tmp_path / "model.tar.gz"), "--no-progress", "--upload", f"s3://{BUCKET}/cli"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    sha = hashlib.sha256((tmp_path / "model.tar.gz").read_bytes()).hexdigest()
    assert out[-1] == f"s3://{BUCKET}/cli/{sha[:16]}/model.tar.gz"
    s3.head_object(Bucket=BUCKET, Key=f"cli/{sha[:16]}/model.tar.gz")
