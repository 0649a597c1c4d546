"""The log groups SageMaker writes the model container's output to, owned by the stack.

SageMaker creates ``/aws/sagemaker/Endpoints/<endpoint>`` (and, for inference components,
``/aws/sagemaker/InferenceComponents/<component>``) itself when it is missing: unencrypted, kept forever.
Creating it first under the same name is how the stack sets its KMS key and retention. The handler's
log lines, its request records (with prompts when ``log_prompts`` is on) and its EMF metric records all
land there; CloudWatch extracts the metrics as they arrive, so retention does not shorten the metrics.

Adapter inference components run in the base component's container and have no container, and no log
group, of their own: only the base component gets one.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import RemovalPolicy
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.components.log_group import EncryptedLogGroup

ENDPOINT_LOGS = "/aws/sagemaker/Endpoints/"
COMPONENT_LOGS = "/aws/sagemaker/InferenceComponents/"


class ContainerLogGroups(Construct):
    """The endpoint's log group (``endpoint``) and each named inference component's (``components``).

    Make the endpoint (or the component) depend on its group, so the group exists before SageMaker
    starts a container, and is deleted after it (``RemovalPolicy.RETAIN`` keeps it: see ``EncryptedLogGroup``).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        endpoint_name: str,
        component_names: Sequence[str],
        retention_days: int,
        removal_policy: RemovalPolicy,
    ) -> None:
        super().__init__(scope, construct_id)

        def group(construct_name: str, log_group_name: str) -> EncryptedLogGroup:
            return EncryptedLogGroup(self, construct_name, log_group_name=log_group_name,
                                     retention_days=retention_days, removal_policy=removal_policy)

        self.endpoint = group("Endpoint", f"{ENDPOINT_LOGS}{endpoint_name}")
        self.components = {name: group(f"Component-{name}", f"{COMPONENT_LOGS}{name}") for name in component_names}

    @property
    def log_groups(self) -> list[logs.LogGroup]:
        """Every log group, the endpoint's first."""
        return [self.endpoint.log_group, *(group.log_group for group in self.components.values())]
