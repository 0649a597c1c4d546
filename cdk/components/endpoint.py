"""The SageMaker endpoint: least-privilege execution role, model, endpoint config and endpoint."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Acknowledgment, Annotations, Stack, Validations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk.components.bucket import ModelArtifact
from cdk.components.images import ImageTable
from cdk.components.nag import acknowledge_wildcard_resource, skip_checkov
from cdk.settings import EndpointSettings

VARIANT_NAME = "AllTraffic"
CAPTURE_PREFIX = "data-capture/"


class ModelEndpoint(Construct):
    """Role + ``CfnModel`` + ``CfnEndpointConfig`` + ``CfnEndpoint`` with blue/green auto-rollback."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: EndpointSettings,
        image: ImageTable,
        artifact: ModelArtifact,
        bucket: s3.IBucket,
        kms_key: kms.IKey | None,
        rollback_alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.endpoint_name = settings.endpoint_name
        self.variant_name = VARIANT_NAME
        self.endpoint_arn = stack.format_arn(service="sagemaker", resource="endpoint", resource_name=self.endpoint_name)

        self.role, self.policy = self._execution_role(settings, image, artifact, bucket, kms_key)
        self.vpc_policies = [self._vpc_policy(self.role)] if settings.vpc_subnet_ids else []
        # The container runs the package's own code: without network it cannot send data anywhere.
        # SageMaker still pulls the image and downloads the model data; VPC settings apply as before.
        self.model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=settings.isolation.enabled,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri(stack.region, stack.url_suffix),
                mode="SingleModel",
                environment=dict(settings.handler_env),
                **artifact.container_model_data(),
            ),
            vpc_config=self._vpc_config(settings),
        )
        # CreateModel checks that the role can read the model data (and use the VPC): attach the policies first.
        self.model.node.add_dependency(self.policy, *self.vpc_policies)
        if not settings.isolation.enabled:
            reason = f"network isolation is off: {settings.isolation.reason}"
            Annotations.of(self.model).add_warning_v2("lora-endpoint:network-isolation-off", reason)
            skip_checkov(self.model, "CKV_AWS_370", reason)

        capture = None
        if settings.data_capture_percent > 0:
            capture = sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
                enable_capture=True,
                initial_sampling_percentage=settings.data_capture_percent,
                destination_s3_uri=f"s3://{bucket.bucket_name}/{CAPTURE_PREFIX}",
                kms_key_id=kms_key.key_arn if kms_key else None,
                capture_options=[
                    sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Input"),
                    sagemaker.CfnEndpointConfig.CaptureOptionProperty(capture_mode="Output"),
                ],
                capture_content_type_header=sagemaker.CfnEndpointConfig.CaptureContentTypeHeaderProperty(
                    json_content_types=["application/json"]
                ),
            )
        # No VolumeSizeInGB and no KmsKeyId: every GPU family allowed has local NVMe storage, for which
        # SageMaker rejects both (the NVMe volume is encrypted by the platform with a hardware key).
        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "Config",
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT_NAME,
                    model_name=self.model.attr_model_name,
                    instance_type=settings.instance_type,
                    initial_instance_count=settings.instance_count,
                    initial_variant_weight=1.0,
                    model_data_download_timeout_in_seconds=settings.model_data_download_timeout_s,
                    container_startup_health_check_timeout_in_seconds=settings.startup_health_check_timeout_s,
                    inference_ami_version=image.inference_ami_version,
                    # LLM requests vary by orders of magnitude in length: route to the least busy copy.
                    routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                        routing_strategy="LEAST_OUTSTANDING_REQUESTS"
                    ),
                )
            ],
            data_capture_config=capture,
        )
        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name,
            deployment_config=sagemaker.CfnEndpoint.DeploymentConfigProperty(
                blue_green_update_policy=sagemaker.CfnEndpoint.BlueGreenUpdatePolicyProperty(
                    traffic_routing_configuration=sagemaker.CfnEndpoint.TrafficRoutingConfigProperty(
                        type="ALL_AT_ONCE", wait_interval_in_seconds=settings.deploy_bake_s
                    ),
                    termination_wait_in_seconds=120,
                    maximum_execution_timeout_in_seconds=max(
                        3600, 2 * settings.startup_health_check_timeout_s + settings.deploy_bake_s
                    ),
                ),
                auto_rollback_configuration=sagemaker.CfnEndpoint.AutoRollbackConfigProperty(
                    alarms=[sagemaker.CfnEndpoint.AlarmProperty(alarm_name=a.alarm_name) for a in rollback_alarms]
                ),
            ),
        )

    def _vpc_config(self, settings: EndpointSettings) -> sagemaker.CfnModel.VpcConfigProperty | None:
        if not settings.vpc_subnet_ids:
            return None
        return sagemaker.CfnModel.VpcConfigProperty(
            subnets=list(settings.vpc_subnet_ids), security_group_ids=list(settings.vpc_security_group_ids)
        )

    def _execution_role(
        self,
        settings: EndpointSettings,
        image: ImageTable,
        artifact: ModelArtifact,
        bucket: s3.IBucket,
        kms_key: kms.IKey | None,
    ) -> tuple[iam.Role, iam.Policy]:
        stack = Stack.of(self)
        role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal(
                "sagemaker.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": stack.account}}
            ),
            description=f"SageMaker execution role for endpoint {self.endpoint_name}",
        )
        log_group = f"arn:{stack.partition}:logs:{stack.region}:{stack.account}:log-group:/aws/sagemaker/Endpoints/"
        log_streams = f"{log_group}{self.endpoint_name}:log-stream:*"
        base_model = settings.effective_base_model
        base_bucket, _, prefix = base_model[len("s3://") :].partition("/")
        base_objects = f"arn:{stack.partition}:s3:::{base_bucket}/{prefix.rstrip('/')}/*"
        statements = [
            iam.PolicyStatement(
                sid="PullLmiImage",
                actions=["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
                resources=[image.repository_arn(stack.region, stack.partition)],
            ),
            iam.PolicyStatement(sid="EcrToken", actions=["ecr:GetAuthorizationToken"], resources=["*"]),
            iam.PolicyStatement(
                sid="OwnLogs",
                actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                resources=[f"{log_group}{self.endpoint_name}", log_streams],
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
        policy = iam.Policy(self, "ExecutionPolicy", statements=statements)
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

    def _vpc_policy(self, role: iam.Role) -> iam.Policy:
        """The network-interface actions SageMaker needs in a VPC, in a policy of their own (for the skips)."""
        policy = iam.Policy(
            self,
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
