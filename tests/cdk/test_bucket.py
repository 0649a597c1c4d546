"""Artifacts bucket hardening and every way of pointing the model at its data."""

from __future__ import annotations

import tarfile
from pathlib import Path

from aws_cdk.assertions import Match, Template

from tests.cdk.conftest import make_stack, only, resources, synth


def _artifacts_bucket(template: Template) -> dict:
    buckets = [r["Properties"] for r in resources(template, "AWS::S3::Bucket").values()
               if "VersioningConfiguration" in r["Properties"]]
    assert len(buckets) == 1
    return buckets[0]


def test_bucket_is_private_encrypted_versioned_logged(default_template: Template) -> None:
    bucket = _artifacts_bucket(default_template)
    assert bucket["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    sse = bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
    assert sse == {"SSEAlgorithm": "AES256"}
    assert bucket["LoggingConfiguration"]["DestinationBucketName"]["Ref"].startswith("ArtifactsAccessLogs")
    rule = bucket["LifecycleConfiguration"]["Rules"][0]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}


def test_every_bucket_denies_plain_http(default_template: Template) -> None:
    policies = resources(default_template, "AWS::S3::BucketPolicy")
    assert len(policies) == 2
    for policy in policies.values():
        statements = policy["Properties"]["PolicyDocument"]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in statements)


def test_buckets_are_retained_by_default(default_template: Template) -> None:
    for bucket in resources(default_template, "AWS::S3::Bucket").values():
        assert bucket["DeletionPolicy"] == "Retain"


def test_customer_kms_key() -> None:
    key = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    template = synth({"kms_key_arn": key})
    sse = _artifacts_bucket(template)["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]
    assert sse["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    assert sse["BucketKeyEnabled"] is True


def test_default_model_data_is_an_uncompressed_prefix_in_the_stack_bucket(default_template: Template) -> None:
    container = only(default_template, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert "ModelDataUrl" not in container
    source = container["ModelDataSource"]["S3DataSource"]
    assert source["S3DataType"] == "S3Prefix"
    assert source["CompressionType"] == "None"
    assert source["S3Uri"]["Fn::Join"][1][2] == "/model/"


def test_s3_archive_uses_model_data_url() -> None:
    template = synth({"model_data": "s3://models-bkt/runs/7/model.tar.gz"})
    container = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert container["ModelDataUrl"] == "s3://models-bkt/runs/7/model.tar.gz"
    assert "ModelDataSource" not in container


def test_s3_prefix_uses_model_data_source() -> None:
    template = synth({"model_data": "s3://models-bkt/runs/7/"})
    container = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]
    assert container["ModelDataSource"] == {"S3DataSource": {
        "S3Uri": "s3://models-bkt/runs/7/", "S3DataType": "S3Prefix", "CompressionType": "None"}}


def test_local_archive_becomes_a_hashed_asset(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"not really gzip but an asset all the same")
    _, stack = make_stack({"model_data": str(archive)}, outdir=str(tmp_path / "out"))
    template = Template.from_stack(stack)
    source = only(template, "AWS::SageMaker::Model")["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
    assert (source["S3DataType"], source["CompressionType"]) == ("S3Object", "Gzip")
    key = source["S3Uri"]["Fn::Join"][1][-1]
    assert len(key.split(".")[0].lstrip("/")) == 64  # the content hash is the key: a new archive redeploys


def test_local_folder_is_packed_deterministically(tmp_path: Path) -> None:
    # GIVEN a model folder
    folder = tmp_path / "model"
    (folder / "adapters" / "a").mkdir(parents=True)
    (folder / "serving.properties").write_text("engine=Python\n")
    (folder / "adapters" / "a" / "adapter_config.json").write_text("{}")
    # WHEN it is synthesized twice
    keys = []
    for run in ("one", "two"):
        _, stack = make_stack({"model_data": str(folder)}, outdir=str(tmp_path / run))
        container = only(Template.from_stack(stack), "AWS::SageMaker::Model")["PrimaryContainer"]
        keys.append(container["ModelDataSource"]["S3DataSource"]["S3Uri"]["Fn::Join"][1][-1])
    # THEN the asset key is the same both times and the staged archive holds the tree
    assert keys[0] == keys[1]
    staged = list((tmp_path / "one").glob("asset.*.tar.gz"))
    assert len(staged) == 1
    with tarfile.open(staged[0]) as tar:
        assert sorted(tar.getnames()) == ["adapters", "adapters/a", "adapters/a/adapter_config.json",
                                          "serving.properties"]
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_model_read_is_scoped_to_the_prefix(default_template: Template) -> None:
    default_template.has_resource_properties("AWS::IAM::Policy", {"PolicyDocument": {"Statement": Match.array_with([
        Match.object_like({"Sid": "ListModelData", "Action": "s3:ListBucket",
                           "Condition": {"StringLike": {"s3:prefix": ["model/*"]}}}),
    ])}})
