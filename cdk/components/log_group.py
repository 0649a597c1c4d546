"""A CloudWatch log group encrypted with its own customer key, kept or deleted with the stack's data."""

from __future__ import annotations

from aws_cdk import RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from constructs import Construct


class EncryptedLogGroup(Construct):
    """Log group + rotating KMS key that only CloudWatch Logs may use, and only for this log group.

    The name is fixed so the key policy can name the log group's ARN without a circular reference. Under
    ``RemovalPolicy.RETAIN`` both stay after ``cdk destroy`` (a retained log group is unreadable without its
    key), and a stack re-created with the same name finds the log group already there: delete it first.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        log_group_name: str,
        retention_days: int,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        arn = f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:{log_group_name}"
        self.key = kms.Key(
            self, "Key", enable_key_rotation=True, removal_policy=removal_policy,
            description=f"Encrypts log group {log_group_name}",
        )
        # CloudWatch Logs sends the log group's ARN as encryption context on every KMS call; pinning it is
        # AWS's documented way to limit the service to this account's one log group (logs.<region> does not
        # document aws:SourceAccount / aws:SourceArn on its KMS requests, and a condition on a key it does not
        # send would deny it).
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchLogsForThisLogGroup",
                actions=["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"],
                principals=[iam.ServicePrincipal(f"logs.{stack.region}.amazonaws.com")],
                resources=["*"],
                conditions={"ArnEquals": {"kms:EncryptionContext:aws:logs:arn": arn}},
            )
        )
        self.log_group = logs.LogGroup(
            self, "LogGroup", log_group_name=log_group_name, encryption_key=self.key, removal_policy=removal_policy,
        )
        # The L2 takes an enum; settings already validated the value against CloudWatch's allowed retentions.
        self.log_group.node.default_child.add_property_override(  # type: ignore[union-attr]
            "RetentionInDays", retention_days
        )
