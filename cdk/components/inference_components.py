"""Inference components: the base component runs the package's model, one adapter component per adapter.

An adapter component has no compute of its own: ``BaseInferenceComponentName`` puts it on the base's
copies and SageMaker hands the container its ``ArtifactUrl`` (a ``.tar.gz`` of the adapter folder) to
register. Callers select an adapter by naming its component (``InferenceComponentName``; the API maps the
adapter header to it).

Tear-down order: CloudFormation deletes a resource before the resources it depends on, and SageMaker
refuses to delete an endpoint that still has components. Every component names the endpoint through its
``GetAtt`` (so it depends on the endpoint, and on the model through the base) and every adapter component
depends on the base: a stack delete removes the adapters, then the base, then the endpoint.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Annotations
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from cdk.components.endpoint import ModelEndpoint
from cdk.endpoint_modes import InferenceComponentSettings

IC = sagemaker.CfnInferenceComponent
# CloudFormation's bounds for a rolling update's execution timeout.
ROLLING_TIMEOUT_S = (600, 28800)

SCALE_TO_ZERO_COST = (
    "scale_to_zero: with no traffic the base inference component goes down to 0 copies and the endpoint to 0 "
    "instances, which then bill nothing. The request that finds no copy is answered 503 no_capacity (the "
    "runtime's 'no capacity' error) and raises the NoCapacityInvocationFailures alarm, which adds a copy; that "
    "needs an instance launched, the image pulled and the model downloaded and loaded: a cold start of minutes "
    "(not measured here), during which every request gets the same 503 and callers must retry."
)


class InferenceComponents(Construct):
    """The base component (``base``) and the adapter components (``adapters`` by name)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: InferenceComponentSettings,
        name: str,
        endpoint: ModelEndpoint,
        rollback_alarms: Sequence[cloudwatch.IAlarm],
    ) -> None:
        super().__init__(scope, construct_id)
        ep = endpoint.settings
        self.name = name
        self.base = IC(
            self,
            "Base",
            endpoint_name=endpoint.endpoint.attr_endpoint_name,
            variant_name=endpoint.variant_name,
            inference_component_name=name,
            specification=IC.InferenceComponentSpecificationProperty(
                model_name=endpoint.model.attr_model_name,
                # A scheduling reservation: SageMaker places a copy where this much is free.
                compute_resource_requirements=IC.InferenceComponentComputeResourceRequirementsProperty(
                    number_of_accelerator_devices_required=settings.accelerators,
                    min_memory_required_in_mb=settings.min_memory_mb,
                ),
                startup_parameters=IC.InferenceComponentStartupParametersProperty(
                    model_data_download_timeout_in_seconds=ep.model_data_download_timeout_s,
                    container_startup_health_check_timeout_in_seconds=ep.startup_health_check_timeout_s,
                ),
            ),
            # Created with at least one copy (AWS refuses 0); autoscaling sets the count from then on.
            runtime_config=IC.InferenceComponentRuntimeConfigProperty(copy_count=settings.copy_count),
            deployment_config=self._rolling_update(endpoint, rollback_alarms),
        )
        # SageMaker reads the model with the config's execution role when it creates the component.
        self.base.node.add_dependency(endpoint.policy)
        self.adapters: dict[str, IC] = {}
        for adapter in settings.adapters:
            component = IC(
                self,
                f"Adapter-{adapter.name}",
                endpoint_name=endpoint.endpoint.attr_endpoint_name,
                inference_component_name=adapter.name,
                specification=IC.InferenceComponentSpecificationProperty(
                    base_inference_component_name=name,
                    container=IC.InferenceComponentContainerSpecificationProperty(artifact_url=adapter.artifact_url),
                ),
            )
            # The base is named by a plain string: say the dependency (created after, deleted before the base).
            component.node.add_dependency(self.base)
            self.adapters[adapter.name] = component
        if settings.scale_to_zero:
            Annotations.of(self.base).add_warning_v2("lora-endpoint:scale-to-zero", SCALE_TO_ZERO_COST)

    def _rolling_update(
        self, endpoint: ModelEndpoint, rollback_alarms: Sequence[cloudwatch.IAlarm]
    ) -> IC.InferenceComponentDeploymentConfigProperty:
        """A new model replaces one copy at a time, bakes ``deploy_bake_s`` and rolls back on the alarms."""
        ep = endpoint.settings
        low, high = ROLLING_TIMEOUT_S
        one_copy = IC.InferenceComponentCapacitySizeProperty(type="COPY_COUNT", value=1)
        return IC.InferenceComponentDeploymentConfigProperty(
            rolling_update_policy=IC.InferenceComponentRollingUpdatePolicyProperty(
                maximum_batch_size=one_copy,
                rollback_maximum_batch_size=one_copy,
                wait_interval_in_seconds=ep.deploy_bake_s,
                maximum_execution_timeout_in_seconds=min(
                    high, max(low, 3600, 2 * ep.startup_health_check_timeout_s + ep.deploy_bake_s)
                ),
            ),
            auto_rollback_configuration=IC.AutoRollbackConfigurationProperty(
                alarms=[IC.AlarmProperty(alarm_name=alarm.alarm_name) for alarm in rollback_alarms]
            ),
        )
