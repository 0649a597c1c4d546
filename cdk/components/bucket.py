"""Artifacts bucket (with its access-log bucket) and the model artifact the endpoint loads."""

from __future__ import annotations

import gzip
import tarfile
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import (
    Acknowledgment,
    AssetHashType,
    BundlingOptions,
    BundlingOutput,
    DockerImage,
    Duration,
    ILocalBundling,
    RemovalPolicy,
    Stack,
    Validations,
)
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk.components.nag import acknowledge_wildcard_resource, skip_checkov
from cdk.model_data import ModelData, ModelDataKind


class ArtifactsBucket(Construct):
    """Private, SSL-only, encrypted, versioned bucket for model artifacts and data capture."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        kms_key: kms.IKey | None,
        removal_policy: RemovalPolicy,
        noncurrent_version_days: int,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_bucket = s3.Bucket(
            self,
            "AccessLogs",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            # S3 server access logs can only be delivered to an SSE-S3 bucket.
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-logs", expiration=Duration.days(log_retention_days))],
            removal_policy=removal_policy,
        )
        loop = "This bucket is the access-log target of the artifacts bucket; logging it would loop."
        Validations.of(self.log_bucket).acknowledge(Acknowledgment(id="AwsSolutions-S1", reason=loop))
        skip_checkov(self.log_bucket, "CKV_AWS_18", loop)
        skip_checkov(
            self.log_bucket, "CKV_AWS_21",
            "S3 writes each access-log object once and the lifecycle rule expires it after log_retention_days; "
            "versions would only keep deleted logs past that retention (the artifacts bucket is versioned).",
        )
        self.bucket = s3.Bucket(
            self,
            "Bucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.KMS if kms_key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=kms_key,
            bucket_key_enabled=kms_key is not None,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.log_bucket,
            server_access_logs_prefix="artifacts/",
            lifecycle_rules=[
                s3.LifecycleRule(
                    id="expire-old-versions",
                    noncurrent_version_expiration=Duration.days(noncurrent_version_days),
                    abort_incomplete_multipart_upload_after=Duration.days(7),
                )
            ],
            removal_policy=removal_policy,
        )


class ModelArtifact(Construct):
    """Resolves ``model_data`` to what ``CfnModel`` needs and grants read access to exactly that."""

    def __init__(self, scope: Construct, construct_id: str, *, model_data: ModelData, bucket: s3.IBucket) -> None:
        super().__init__(scope, construct_id)
        self._asset: s3_assets.Asset | None = None
        self._bucket = bucket
        kind = model_data.kind
        if kind is ModelDataKind.LOCAL_ARCHIVE:
            self._asset = s3_assets.Asset(self, "Asset", path=model_data.path)
        elif kind is ModelDataKind.LOCAL_FOLDER:
            self._asset = s3_assets.Asset(
                self,
                "Asset",
                path=model_data.path,
                asset_hash_type=AssetHashType.SOURCE,
                bundling=BundlingOptions(
                    image=DockerImage.from_registry("local-bundling-only"),
                    local=TarGzBundler(model_data.path),  # type: ignore[arg-type]  # jsii passes options positionally
                    output_type=BundlingOutput.SINGLE_FILE,
                ),
            )
        if self._asset is not None:
            self.bucket_name: str = self._asset.s3_bucket_name
            self.key: str = self._asset.s3_object_key
        elif kind is ModelDataKind.STACK_BUCKET:
            self.bucket_name, self.key = bucket.bucket_name, model_data.key
        else:
            self.bucket_name, self.key = model_data.bucket, model_data.key
        self.compressed = model_data.compressed
        partition = Stack.of(self).partition
        self.s3_uri = f"s3://{self.bucket_name}/{self.key}"
        self.bucket_arn = f"arn:{partition}:s3:::{self.bucket_name}"

    def container_model_data(self) -> dict[str, Any]:
        """``model_data_url`` or ``model_data_source`` for ``ContainerDefinition``.

        An S3 ``.tar.gz`` uses ``ModelDataUrl``; an uncompressed prefix uses ``S3Prefix``/``None``. A CDK asset's
        key is ``<hash>.gz`` (no ``.tar.gz`` suffix), so it is declared explicitly as a gzip ``S3Object``.
        """
        if self._asset is None and self.compressed:
            return {"model_data_url": self.s3_uri}
        source = sagemaker.CfnModel.S3DataSourceProperty(
            s3_uri=self.s3_uri,
            s3_data_type="S3Object" if self.compressed else "S3Prefix",
            compression_type="Gzip" if self.compressed else "None",
        )
        return {"model_data_source": sagemaker.CfnModel.ModelDataSourceProperty(s3_data_source=source)}

    def grant_read(self, policy: iam.Policy) -> None:
        """Add to ``policy`` reading the artifact (one object, or the objects under one prefix), nothing else."""
        if self.compressed:
            policy.add_statements(
                iam.PolicyStatement(
                    sid="ReadModelData", actions=["s3:GetObject"], resources=[f"{self.bucket_arn}/{self.key}"]
                )
            )
            return
        objects = f"{self.bucket_arn}/{self.key}*"
        policy.add_statements(
            iam.PolicyStatement(sid="ReadModelData", actions=["s3:GetObject"], resources=[objects]),
            iam.PolicyStatement(
                sid="ListModelData",
                actions=["s3:ListBucket"],
                resources=[self.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.key}*"]}},
            ),
        )
        acknowledge_wildcard_resource(
            policy, objects, "An uncompressed model is a tree of objects under one prefix; the role reads only those."
        )


@jsii.implements(ILocalBundling)
class TarGzBundler:
    """Packs a folder into one deterministic ``model.tar.gz`` (sorted, zeroed times and owners)."""

    def __init__(self, source: str) -> None:
        self._source = Path(source)

    def try_bundle(self, output_dir: str, options: Any = None) -> bool:
        """Write ``model.tar.gz`` into ``output_dir``; always succeeds locally (no Docker)."""
        target = Path(output_dir) / "model.tar.gz"
        with open(target, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
                tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(self._source.rglob("*")):
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(self._source)))
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                if info.isfile():
                    with open(path, "rb") as handle:
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info)
        return True
