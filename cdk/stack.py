"""The stack: composes the components in dependency order and exports what operators need."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, RemovalPolicy, Stack
from aws_cdk import aws_kms as kms
from constructs import Construct

from cdk.components.api import InferenceApi
from cdk.components.autoscaling import CopyAutoscaling, VariantAutoscaling
from cdk.components.bucket import ArtifactsBucket, ModelArtifact
from cdk.components.container_logs import ContainerLogGroups
from cdk.components.dashboard import OperationsDashboard
from cdk.components.endpoint import VARIANT_NAME, ModelEndpoint
from cdk.components.execution_role import ADAPTERS_PREFIX, grant_component_access
from cdk.components.inference_components import InferenceComponents
from cdk.components.llm_metrics import LlmMetrics
from cdk.components.observability import AlertTopic, ApiAlarms, EndpointAlarms
from cdk.endpoint_modes import COMPONENTS, SERVERLESS, VARIANT
from cdk.settings import DeploymentSettings


class LoraEndpointStack(Stack):
    """Artifacts bucket -> alarms -> container log groups -> endpoint (rolls back on those alarms) ->
    inference components -> autoscaling -> API -> dashboard."""

    def __init__(self, scope: Construct, construct_id: str, *, settings: DeploymentSettings, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        ep = settings.endpoint
        mode = ep.mode
        kms_key = kms.Key.from_key_arn(self, "CustomerKey", settings.kms_key_arn) if settings.kms_key_arn else None
        removal = RemovalPolicy.DESTROY if settings.removal_policy == "destroy" else RemovalPolicy.RETAIN

        artifacts = ArtifactsBucket(
            self, "Artifacts", kms_key=kms_key, removal_policy=removal,
            noncurrent_version_days=settings.noncurrent_version_days,
            log_retention_days=settings.log_retention_days,
        )
        model = ModelArtifact(self, "ModelData", model_data=ep.model_data, bucket=artifacts.bucket)
        topic = AlertTopic(self, "Alerts", email=settings.alarms.email)
        variant_dims = {"EndpointName": ep.endpoint_name, "VariantName": VARIANT_NAME}
        endpoint_alarms = EndpointAlarms(
            self, "EndpointAlarms", settings=settings.alarms, subject=ep.endpoint_name,
            # With inference components the invocation metrics are the base component's.
            invocation_dims={"InferenceComponentName": settings.base_component} if mode == COMPONENTS
            else variant_dims,
            instance_dims=variant_dims, instance_type=None if mode == SERVERLESS else ep.instance_type,
            topic=topic.topic,
        )
        llm = LlmMetrics(
            self, "LlmMetrics", settings=settings.alarms, namespace=ep.metrics_namespace,
            endpoint_name=ep.endpoint_name, topic=topic.topic,
        ) if ep.handler_settings.metrics != "off" else None
        # SageMaker writes the container's output (and the handler's metric records) here: created first.
        container_logs = ContainerLogGroups(
            self, "ContainerLogs", endpoint_name=ep.endpoint_name,
            component_names=[settings.base_component] if mode == COMPONENTS else [],
            retention_days=settings.log_retention_days, removal_policy=removal,
        )
        endpoint = ModelEndpoint(
            self, "Endpoint", deployment=settings, artifact=model, bucket=artifacts.bucket,
            kms_key=kms_key, rollback_alarms=endpoint_alarms.rollback_alarms,
        )
        endpoint.endpoint.node.add_dependency(container_logs.endpoint)
        if mode == VARIANT:
            VariantAutoscaling(
                self, "Autoscaling", settings=settings.scaling, endpoint_name=endpoint.endpoint_name,
                variant_name=endpoint.variant_name, endpoint=endpoint.endpoint,
            )
        if mode == COMPONENTS:
            components = InferenceComponents(
                self, "Components", settings=settings.components, name=settings.base_component, endpoint=endpoint,
                rollback_alarms=endpoint_alarms.rollback_alarms,
            )
            components.base.node.add_dependency(container_logs.components[components.name])
            grant_component_access(
                endpoint.policy, component_name=components.name, adapters=settings.components.adapters,
                bucket=artifacts.bucket,
            )
            CopyAutoscaling(
                self, "CopyScaling", scaling=settings.scaling, settings=settings.components,
                component_name=components.name, component=components.base,
                alarm_components=[components.name, *components.adapters],
            )
        api = InferenceApi(
            self, "Api", settings=settings.api, endpoint_name=endpoint.endpoint_name,
            endpoint_arn=endpoint.endpoint_arn, log_retention_days=settings.log_retention_days,
            removal_policy=removal, inference_component=settings.base_component if mode == COMPONENTS else None,
        )
        api_alarms = ApiAlarms(
            self, "ApiAlarms", settings=settings.alarms, api_name=api.api.rest_api_name,
            stage=settings.api.stage_name, topic=topic.topic,
        )
        dashboard = OperationsDashboard(
            self, "Operations", name=f"{ep.endpoint_name}-{self.region}", endpoint=endpoint_alarms, api=api_alarms,
            llm=llm,
        )

        CfnOutput(self, "EndpointName", value=endpoint.endpoint.attr_endpoint_name)
        CfnOutput(self, "EndpointArn", value=endpoint.endpoint.ref)
        CfnOutput(self, "ApiUrl", value=api.api.url)
        CfnOutput(self, "ArtifactsBucketName", value=artifacts.bucket.bucket_name)
        CfnOutput(self, "ModelDataUri", value=model.s3_uri)
        CfnOutput(self, "AlarmTopicArn", value=topic.topic.topic_arn)
        CfnOutput(
            self, "DashboardUrl",
            value=f"https://{self.region}.console.aws.amazon.com/cloudwatch/home?region={self.region}"
            f"#dashboards:name={dashboard.dashboard.dashboard_name}",
        )
        if mode == COMPONENTS:
            CfnOutput(self, "BaseInferenceComponentName", value=settings.base_component,
                      description="adapter inference components name it as BaseInferenceComponentName")
            CfnOutput(self, "AdapterArtifactsUri", value=f"s3://{artifacts.bucket.bucket_name}/{ADAPTERS_PREFIX}",
                      description="upload adapter .tar.gz archives here; the execution role may read them")
        if api.api_key is not None:
            CfnOutput(self, "ApiKeyId", value=api.api_key.key_id,
                      description="aws apigateway get-api-key --include-value --api-key <id>")
