"""The endpoint's SageMaker execution role: least privilege for what the model container and SageMaker do."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Acknowledgment, Stack, Validations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.components.bucket import ModelArtifact
from cdk.components.container_logs import COMPONENT_LOGS, ENDPOINT_LOGS
from cdk.components.images import FRAMEWORK as LMI_FRAMEWORK
from cdk.components.images import ImageTable
from cdk.components.nag import acknowledge_wildcard_resource, skip_checkov
from cdk.endpoint_modes import AdapterComponent
from cdk.settings import EndpointSettings

CAPTURE_PREFIX = "data-capture/"


def execution_role(
    scope: Construct,
    *,
    settings: EndpointSettings,
    image: ImageTable,
    artifact: ModelArtifact,
    bucket: s3.IBucket,
    kms_key: kms.IKey | None,
) -> tuple[iam.Role, iam.Policy]:
    """``ExecutionRole`` and ``ExecutionPolicy`` in ``scope``: pull the one image, read the model data (and an
    ``s3://`` base), write the endpoint's own logs and SageMaker metrics, write data capture, nothing else."""
    stack = Stack.of(scope)
    endpoint_name = settings.endpoint_name
    role = iam.Role(
        scope,
        "ExecutionRole",
        assumed_by=iam.ServicePrincipal(
            "sagemaker.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
        ),
        description=f"SageMaker execution role for endpoint {endpoint_name}",
    )
    log_group = f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{ENDPOINT_LOGS}"
    log_streams = f"{log_group}{endpoint_name}:log-stream:*"
    base_model = settings.effective_base_model
    base_bucket, _, prefix = base_model[len("s3://") :].partition("/")
    base_objects = f"arn:{stack.partition}:s3:::{base_bucket}/{prefix.rstrip('/')}/*"
    statements = [
        iam.PolicyStatement(
            sid="PullLmiImage" if image.framework == LMI_FRAMEWORK else "PullImage",
            actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
            resources=[image.repository_arn(stack.region, stack.partition)],
        ),
        iam.PolicyStatement(sid="EcrToken", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
        iam.PolicyStatement(
            sid="OwnLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[f"{log_group}{endpoint_name}", log_streams],
        ),
        iam.PolicyStatement(
            sid="OwnMetrics",
            actions=["cloudwatch:PutMetricData"],
            resources=["*"],
            conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker"]}},
        ),
    ]
    if base_model.startswith("s3://"):
        statements += [
            iam.PolicyStatement(sid="ReadBaseModel", actions=["s3:GetObject"], resources=[base_objects]),
            iam.PolicyStatement(
                sid="ListBaseModel",
                actions=["s3:ListBucket"],
                resources=[f"arn:{stack.partition}:s3:::{base_bucket}"],
                conditions={"StringLike": {"s3:prefix": [f"{prefix.rstrip('/')}/*"]}},
            ),
        ]
    if settings.data_capture_percent > 0:
        statements.append(
            iam.PolicyStatement(
                sid="WriteDataCapture",
                actions=["s3:PutObject"],
                resources=[bucket.arn_for_objects(f"{CAPTURE_PREFIX}*")],
            )
        )
    policy = iam.Policy(scope, "ExecutionPolicy", statements=statements)
    policy.attach_to_role(role)
    if kms_key is not None:
        # Explicit actions: the grant_* helpers add kms:ReEncrypt* / GenerateDataKey* wildcards.
        actions = ["kms:Decrypt", "kms:DescribeKey"]
        if settings.data_capture_percent > 0:
            actions += ["kms:Encrypt", "kms:GenerateDataKey"]
        policy.add_statements(iam.PolicyStatement(sid="UseCustomerKey", actions=actions,
                                                  resources=[kms_key.key_arn]))
    artifact.grant_read(policy)
    Validations.of(policy).acknowledge(
        Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="ecr:GetAuthorizationToken and cloudwatch:PutMetricData (limited by a namespace condition)"
            " support no resource-level permissions",
        )
    )
    acknowledge_wildcard_resource(
        policy, log_streams, "Log streams are created per instance at run time in this endpoint's own log group."
    )
    if settings.data_capture_percent > 0:
        acknowledge_wildcard_resource(
            policy, bucket.arn_for_objects(f"{CAPTURE_PREFIX}*"),
            "Data capture writes one object per sampled request under this prefix of the artifacts bucket.",
        )
    if base_model.startswith("s3://"):
        acknowledge_wildcard_resource(
            policy, base_objects, "The base model is a tree of objects under one prefix; only those are read."
        )
    return role, policy


def vpc_policy(scope: Construct, role: iam.Role) -> iam.Policy:
    """The network-interface actions SageMaker needs in a VPC, in a policy of their own (for the skips)."""
    policy = iam.Policy(
        scope,
        "VpcPolicy",
        statements=[
            iam.PolicyStatement(
                sid="VpcNetworkInterfaces",
                actions=[
                    "ec2:CreateNetworkInterface", "ec2:CreateNetworkInterfacePermission",
                    "ec2:DeleteNetworkInterface", "ec2:DeleteNetworkInterfacePermission",
                    "ec2:DescribeNetworkInterfaces", "ec2:DescribeVpcs", "ec2:DescribeDhcpOptions",
                    "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups",
                ],
                resources=["*"],
            )
        ],
    )
    policy.attach_to_role(role)
    reason = ("SageMaker's documented VPC permissions: it creates, shares and deletes the endpoint's network "
              "interfaces itself, whose ids are not known before it does")
    Validations.of(policy).acknowledge(Acknowledgment(id="AwsSolutions-IAM5[Resource::*]", reason=reason))
    skip_checkov(policy, "CKV_AWS_109", reason)
    skip_checkov(policy, "CKV_AWS_111", reason)
    return policy


ADAPTERS_PREFIX = "adapters/"
"""Where in the artifacts bucket adapter archives added at run time (``lora_endpoint/commands/adapters.py``) go."""


def grant_component_access(
    policy: iam.Policy, *, component_name: str, adapters: Sequence[AdapterComponent], bucket: s3.IBucket
) -> None:
    """What SageMaker needs with inference components, under the endpoint config's execution role.

    It writes the base component's log group (adapter components run in the base's container and have
    none of their own) and reads each adapter component's ``ArtifactUrl``: the configured ones, and any
    archive under ``adapters/`` of the artifacts bucket, for adapter components added at run time.
    """
    stack = Stack.of(policy)
    log_group = (f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:"
                 f"{COMPONENT_LOGS}{component_name}")
    runtime_adapters = bucket.arn_for_objects(f"{ADAPTERS_PREFIX}*")
    policy.add_statements(
        iam.PolicyStatement(
            sid="ComponentLogs",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
            resources=[log_group, f"{log_group}:log-stream:*"],
        ),
        iam.PolicyStatement(sid="ReadRuntimeAdapters", actions=["s3:GetObject"], resources=[runtime_adapters]),
    )
    if adapters:
        policy.add_statements(iam.PolicyStatement(
            sid="ReadAdapterArtifacts",
            actions=["s3:GetObject"],
            resources=sorted({f"arn:{stack.partition}:s3:::{a.bucket}/{a.key}" for a in adapters}),
        ))
    acknowledge_wildcard_resource(
        policy, f"{log_group}:log-stream:*",
        "Log streams are created per instance at run time in the base inference component's own log group.",
    )
    acknowledge_wildcard_resource(
        policy, runtime_adapters,
        "Adapter inference components added at run time point at archives uploaded under this prefix of the "
        "artifacts bucket; the role only reads them.",
    )
