"""The SageMaker model, endpoint config and endpoint, in the endpoint mode the settings choose.

- ``variant``: the production variant runs the model on GPU instances; blue/green updates roll back on alarms.
- ``inference_components``: the variant names no model; it carries the execution role, managed instance
  scaling and least-outstanding-requests routing, and the inference components (``inference_components``
  module) run the model on it. Their own rolling updates roll back on the alarms.
- ``serverless``: the variant has a ``ServerlessConfig`` and runs the Hugging Face CPU container with the
  package's ``code/inference.py``; no instance settings.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Annotations, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk.components.bucket import ModelArtifact
from cdk.components.execution_role import CAPTURE_PREFIX, execution_role, vpc_policy
from cdk.components.images import ImageTable
from cdk.components.nag import skip_checkov
from cdk.endpoint_modes import COMPONENTS, SERVERLESS
from cdk.settings import DeploymentSettings, EndpointSettings

VARIANT_NAME = "AllTraffic"
MODEL_DIR = "/opt/ml/model"
# The SageMaker inference toolkits load code/inference.py from the model dir (SAGEMAKER_PROGRAM names the file,
# inference.py is also their default) and put code/ on sys.path themselves; neither the HF nor the PyTorch
# toolkit reads SAGEMAKER_SUBMIT_DIRECTORY, which is set to where the code is, as the SageMaker Python SDK does.
# AWS recommends one worker on serverless endpoints (one copy of the model in memory); the toolkit's default is
# one per vCPU.
TOOLKIT_ENV = {
    "SAGEMAKER_PROGRAM": "inference.py",
    "SAGEMAKER_SUBMIT_DIRECTORY": f"{MODEL_DIR}/code",
    "SAGEMAKER_MODEL_SERVER_WORKERS": "1",
}


SERVERLESS_COST = (
    "serverless: SageMaker starts instances on demand and scales them to zero by itself; a request that finds "
    "no warm instance waits while one starts and loads the model (a cold start, not measured here), unless "
    "serverless_provisioned_concurrency keeps that many warm (billed while provisioned)."
)


class ModelEndpoint(Construct):
    """Role + ``CfnModel`` + ``CfnEndpointConfig`` + ``CfnEndpoint``."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        deployment: DeploymentSettings,
        artifact: ModelArtifact,
        bucket: s3.IBucket,
        kms_key: kms.IKey | None,
        rollback_alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        settings, image = deployment.endpoint, deployment.image
        self.settings = settings
        self.endpoint_name = settings.endpoint_name
        self.variant_name = VARIANT_NAME
        self.endpoint_arn = stack.format_arn(service="sagemaker", resource="endpoint", resource_name=self.endpoint_name)

        self.role, self.policy = execution_role(
            self, settings=settings, image=image, artifact=artifact, bucket=bucket, kms_key=kms_key
        )
        self.vpc_policies = [vpc_policy(self, self.role)] if settings.vpc_subnet_ids else []
        # The container runs the package's own code: without network it cannot send data anywhere.
        # SageMaker still pulls the image and downloads the model data; VPC settings apply as before.
        serverless = settings.mode == SERVERLESS
        self.model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            enable_network_isolation=settings.isolation.enabled,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image.uri(stack.region, stack.url_suffix),
                mode="SingleModel",
                environment={**settings.container_env, **(TOOLKIT_ENV if serverless else {})},
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

        components = settings.mode == COMPONENTS
        # No VolumeSizeInGB and no KmsKeyId: every GPU family allowed has local NVMe storage, for which
        # SageMaker rejects both (the NVMe volume is encrypted by the platform with a hardware key).
        self.endpoint_config = sagemaker.CfnEndpointConfig(
            self,
            "Config",
            production_variants=[self._variant(deployment, image)],
            data_capture_config=self._capture(settings, bucket, kms_key),
            # With inference components the config, not a model, says which role SageMaker uses (to read the
            # model and adapter artifacts) and whether the containers it starts are isolated and in the VPC.
            execution_role_arn=self.role.role_arn if components else None,
            enable_network_isolation=settings.isolation.enabled if components else None,
            vpc_config=self._config_vpc(settings) if components else None,
        )
        if components:
            self.endpoint_config.node.add_dependency(self.policy, *self.vpc_policies)
        if serverless:
            Annotations.of(self.endpoint_config).add_warning_v2("lora-endpoint:serverless-cold-start", SERVERLESS_COST)
        self.endpoint = sagemaker.CfnEndpoint(
            self,
            "Endpoint",
            endpoint_name=self.endpoint_name,
            endpoint_config_name=self.endpoint_config.attr_endpoint_config_name,
            # Inference components update by their own rolling policy (and roll back on the alarms there).
            deployment_config=None if components else self._blue_green(settings, rollback_alarms),
        )

    def _variant(
        self, deployment: DeploymentSettings, image: ImageTable
    ) -> sagemaker.CfnEndpointConfig.ProductionVariantProperty:
        settings, scaling, serverless = deployment.endpoint, deployment.scaling, deployment.serverless
        if settings.mode == SERVERLESS:
            # Serverless has no instance type, count, AMI, timeouts or routing of its own.
            return sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                variant_name=VARIANT_NAME,
                model_name=self.model.attr_model_name,
                serverless_config=sagemaker.CfnEndpointConfig.ServerlessConfigProperty(
                    memory_size_in_mb=serverless.memory_mb,
                    max_concurrency=serverless.max_concurrency,
                    provisioned_concurrency=serverless.provisioned_concurrency or None,
                ),
            )
        components = settings.mode == COMPONENTS
        return sagemaker.CfnEndpointConfig.ProductionVariantProperty(
            variant_name=VARIANT_NAME,
            model_name=None if components else self.model.attr_model_name,
            instance_type=settings.instance_type,
            initial_instance_count=settings.instance_count,
            initial_variant_weight=1.0,
            # With inference components these two are startup parameters of each component.
            model_data_download_timeout_in_seconds=None if components else settings.model_data_download_timeout_s,
            container_startup_health_check_timeout_in_seconds=(
                None if components else settings.startup_health_check_timeout_s
            ),
            inference_ami_version=image.inference_ami_version,
            managed_instance_scaling=sagemaker.CfnEndpointConfig.ManagedInstanceScalingProperty(
                status="ENABLED", min_instance_count=scaling.min_capacity, max_instance_count=scaling.max_capacity
            ) if components else None,
            # LLM requests vary by orders of magnitude in length: route to the least busy copy.
            routing_config=sagemaker.CfnEndpointConfig.RoutingConfigProperty(
                routing_strategy="LEAST_OUTSTANDING_REQUESTS"
            ),
        )

    def _capture(
        self, settings: EndpointSettings, bucket: s3.IBucket, kms_key: kms.IKey | None
    ) -> sagemaker.CfnEndpointConfig.DataCaptureConfigProperty | None:
        if settings.data_capture_percent == 0:
            return None
        return sagemaker.CfnEndpointConfig.DataCaptureConfigProperty(
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

    def _blue_green(
        self, settings: EndpointSettings, rollback_alarms: Sequence[cloudwatch.IAlarm]
    ) -> sagemaker.CfnEndpoint.DeploymentConfigProperty:
        return sagemaker.CfnEndpoint.DeploymentConfigProperty(
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
        )

    def _vpc_config(self, settings: EndpointSettings) -> sagemaker.CfnModel.VpcConfigProperty | None:
        if not settings.vpc_subnet_ids:
            return None
        return sagemaker.CfnModel.VpcConfigProperty(
            subnets=list(settings.vpc_subnet_ids), security_group_ids=list(settings.vpc_security_group_ids)
        )

    def _config_vpc(self, settings: EndpointSettings) -> sagemaker.CfnEndpointConfig.VpcConfigProperty | None:
        if not settings.vpc_subnet_ids:
            return None
        return sagemaker.CfnEndpointConfig.VpcConfigProperty(
            subnets=list(settings.vpc_subnet_ids), security_group_ids=list(settings.vpc_security_group_ids)
        )

