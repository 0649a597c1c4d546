"""Target-tracking autoscaling of the endpoint's production variant.

Default metric: ``SageMakerVariantConcurrentRequestsPerModelHighResolution`` - in-flight requests per
model copy, published every 10 s. LLM requests last seconds to a minute, so concurrency tracks load far
better than ``SageMakerVariantInvocationsPerInstance`` (a per-minute count that reads the same for ten
one-token answers as for ten 2,000-token ones) and reacts in under a minute instead of three.
``scaling_metric=invocations`` selects the per-minute count for short, uniform requests.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from constructs import Construct, IDependable

from cdk.settings import ScalingSettings

METRICS = {
    "concurrency": appscaling.PredefinedMetric.SAGEMAKER_VARIANT_CONCURRENT_REQUESTS_PER_MODEL_HIGH_RESOLUTION,
    "invocations": appscaling.PredefinedMetric.SAGEMAKER_VARIANT_INVOCATIONS_PER_INSTANCE,
}


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
        self.target = appscaling.ScalableTarget(
            self,
            "Target",
            service_namespace=appscaling.ServiceNamespace.SAGEMAKER,
            resource_id=f"endpoint/{endpoint_name}/variant/{variant_name}",
            scalable_dimension="sagemaker:variant:DesiredInstanceCount",
            min_capacity=settings.min_capacity,
            max_capacity=settings.max_capacity,
        )
        # The variant must exist before it can be registered (the resource id is a plain string).
        self.target.node.add_dependency(endpoint)
        self.policy = self.target.scale_to_track_metric(
            "TargetTracking",
            target_value=settings.scaling_target,
            predefined_metric=METRICS[settings.scaling_metric],
            scale_in_cooldown=Duration.seconds(settings.scale_in_cooldown_s),
            scale_out_cooldown=Duration.seconds(settings.scale_out_cooldown_s),
        )
