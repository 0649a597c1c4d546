"""Suppressions next to what they excuse: cdk-nag acknowledgements and checkov skips, each with its reason."""

from __future__ import annotations

from typing import Any

from aws_cdk import Acknowledgment, CfnResource, Stack, Validations
from constructs import IConstruct


def _render(value: Any) -> str:
    """Render a resolved value the way cdk-nag prints it (``Ref`` -> ``<Id>``, ``GetAtt`` -> ``<Id.Attr>``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Ref" in value:
        return f"<{value['Ref']}>"
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return f"<{'.'.join(value['Fn::GetAtt'])}>"
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_render(part) for part in parts)
    raise ValueError(f"cannot render {value!r} as a cdk-nag finding")


def acknowledge_wildcard_resource(policy: IConstruct, resource: str, reason: str) -> None:
    """Acknowledge ``AwsSolutions-IAM5`` for one wildcard ``resource`` (an ARN string, tokens allowed)."""
    rendered = _render(Stack.of(policy).resolve(resource))
    Validations.of(policy).acknowledge(Acknowledgment(id=f"AwsSolutions-IAM5[Resource::{rendered}]", reason=reason))


def skip_checkov(construct: IConstruct, check_id: str, comment: str) -> None:
    """Record a checkov suppression on ``construct``'s CloudFormation resource (``Metadata.checkov.skip``).

    checkov reads ``{"id", "comment"}`` entries there; the comment is the reason a reviewer accepts.
    """
    resource = construct if isinstance(construct, CfnResource) else construct.node.default_child
    if not isinstance(resource, CfnResource):
        raise TypeError(f"{construct.node.path} has no CloudFormation resource to annotate")
    metadata = resource.get_metadata("checkov") or {}
    skips = [*metadata.get("skip", []), {"id": check_id, "comment": comment}]
    resource.add_metadata("checkov", {**metadata, "skip": skips})
