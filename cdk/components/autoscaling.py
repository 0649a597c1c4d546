"""Autoscaling: instances of the production variant, or copies of the base inference component.

Default metric: ``SageMakerVariantConcurrentRequestsPerModelHighResolution`` - in-flight requests per
model copy, published every 10 s. LLM requests last seconds to a minute, so concurrency tracks load far
better than ``SageMakerVariantInvocationsPerInstance`` (a per-minute count that reads the same for ten
one-token answers as for ten 2,000-token ones) and reacts in under a minute instead of three.
``scaling_metric=invocations`` selects the per-minute count for short, uniform requests.

With inference components the same two metrics exist per copy
(``SageMakerInferenceComponentConcurrentRequestsPerCopyHighResolution``, ``...InvocationsPerCopy``) and
scale ``DesiredCopyCount``; SageMaker's managed instance scaling adds and removes the instances the copies
need. Target tracking cannot scale up from zero copies (there is no traffic to measure: requests fail
before they reach a copy), so with ``scale_to_zero`` an alarm on ``NoCapacityInvocationFailures`` drives a
step policy that adds one copy.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from constructs import Construct, IDependable

from cdk.endpoint_modes import InferenceComponentSettings
from cdk.settings import ScalingSettings

METRICS = {
    "concurrency": appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION,
    "invocations": appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
}
_PREDEFINED = appscaling.PredefinedMetric
COPY_METRICS = {
    "concurrency": _PREDEFINED.SAGEMAKER_INFERENCE_COMPONENT_CONCURRENT_REQUESTS_PER_COPY_HIGH_RESOLUTION,
    "invocations": _PREDEFINED.SAGEMAKER_INFERENCE_COMPONENT_INVOCATIONS_PER_COPY,
}


def _tracked_target(
    scope: Construct,
    *,
    resource_id: str,
    dimension: str,
    bounds: tuple[int, int],
    after: IDependable,
    scaling: ScalingSettings,
    metric: appscaling.PredefinedMetric,
) -> tuple[appscaling.ScalableTarget, appscaling.TargetTrackingScalingPolicy]:
    """``Target`` (registered after ``after`` exists) and its ``TargetTracking`` policy on ``metric``."""
    target = appscaling.ScalableTarget(
        scope,
        "Target",
        service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
        resource_id=resource_id,
        scalable_dimension=dimension,
        min_capacity=bounds[0],
        max_capacity=bounds[1],
    )
    target.node.add_dependency(after)
    policy = target.scale_to_track_metric(
        "TargetTracking",
        target_value=scaling.scaling_target,
        predefined_metric=metric,
        scale_in_cooldown=Duration.seconds(scaling.scale_in_cooldown_s),
        scale_out_cooldown=Duration.seconds(scaling.scale_out_cooldown_s),
    )
    return target, policy


class VariantAutoscaling(Construct):
    """Scalable target on ``DesiredInstanceCount`` plus one target-tracking policy."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: ScalingSettings,
        endpoint_name: str,
        variant_name: str,
        endpoint: IDependable,
    ) -> None:
        super().__init__(scope, construct_id)
        # The variant must exist before it can be registered (the resource id is a plain string).
        self.target, self.policy = _tracked_target(
            self, resource_id=f"endpoint/{endpoint_name}/variant/{variant_name}",
            dimension="sagemaker:variant:DesiredInstanceCount",
            bounds=(settings.min_capacity, settings.max_capacity), after=endpoint, scaling=settings,
            metric=METRICS[settings.scaling_metric],
        )


class CopyAutoscaling(Construct):
    """Scalable target on the base component's ``DesiredCopyCount``, target tracking, and scale from zero.

    ``alarm_components`` are the components whose "no capacity" failures mean a copy is needed: the base
    and its adapter components (all served by the base's copies). One alarm each, all driving the same step.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        scaling: ScalingSettings,
        settings: InferenceComponentSettings,
        component_name: str,
        component: IDependable,
        alarm_components: Sequence[str],
    ) -> None:
        super().__init__(scope, construct_id)
        # Registered after the component exists, deregistered before it is deleted.
        self.target, self.policy = _tracked_target(
            self, resource_id=f"inference-component/{component_name}",
            dimension="sagemaker:inference-component:DesiredCopyCount",
            bounds=(settings.min_copies, settings.max_copies), after=component, scaling=scaling,
            metric=COPY_METRICS[scaling.scaling_metric],
        )
        self.from_zero: appscaling.StepScalingAction | None = None
        self.no_capacity_alarms: dict[str, cw.Alarm] = {}
        if settings.scale_to_zero:
            self.from_zero = appscaling.StepScalingAction(
                self,
                "FromZero",
                scaling_target=self.target,
                adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
                metric_aggregation_type=appscaling.MetricAggregationType.MAXIMUM,
                cooldown=Duration.seconds(scaling.scale_out_cooldown_s),
            )
            self.from_zero.add_adjustment(adjustment=1, lower_bound=0)
            for name in alarm_components:
                self.no_capacity_alarms[name] = self._no_capacity_alarm(name, self.from_zero)

    def _no_capacity_alarm(self, name: str, action: appscaling.StepScalingAction) -> cw.Alarm:
        alarm = cw.Alarm(
            self,
            f"NoCapacity-{name}",
            alarm_description=f"{name}: requests found no copy to serve them; add one (scale from zero)",
            metric=cw.Metric(
                namespace="AWS/SageMaker",
                metric_name="NoCapacityInvocationFailures",
                dimensions_map={"InferenceComponentName": name},
                statistic="Maximum",
                period=Duration.minutes(1),
            ),
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            # No failures are published while copies serve: that is the normal state, not a breach.
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )
        alarm.add_alarm_action(cw_actions.ApplicationScalingAction(action))
        return alarm
