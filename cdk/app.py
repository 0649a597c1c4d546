"""CDK entry point: read context once, build the stack, run cdk-nag, synthesize.

    .venv/bin/python -m cdk.app          # what cdk.json runs; `make synth` / `npx cdk synth` call it
"""

from __future__ import annotations

import os
import sys

from aws_cdk import App, Environment, Validations
from aws_cdk.cx_api import CloudAssembly, SynthesisMessageLevel
from cdk_nag import AwsSolutionsChecks

from cdk.settings import ContextError, DeploymentSettings, known_keys
from cdk.stack import LoraEndpointStack

# Feature flags live here, not in cdk.json, so `python -m cdk.app`, the CLI and the tests build the same thing.
FEATURE_FLAGS: dict[str, object] = {
    "@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy": True,
    "@aws-cdk/aws-s3:createDefaultLoggingPolicy": True,
    "@aws-cdk/aws-iam:minimizePolicies": True,
    "@aws-cdk/core:enablePartitionLiterals": True,
    "@aws-cdk/aws-apigateway:usagePlanKeyOrderInsensitiveId": True,
    "@aws-cdk/aws-apigateway:requestValidatorUniqueId": True,
    "@aws-cdk/aws-kms:reduceCrossAccountRegionPolicyScope": True,
}

# Keys the CDK toolkit itself puts into context; anything else we do not read is most likely a typo.
_TOOLKIT_KEYS = ("acknowledged-issue-numbers", "cli-telemetry")


def build(app: App, settings: DeploymentSettings, *, nag: bool = True) -> LoraEndpointStack:
    """Add the stack and (unless ``nag`` is false, for fast component tests) the cdk-nag AwsSolutions checks."""
    env = Environment(account=settings.account or None, region=settings.region)
    stack = LoraEndpointStack(
        app,
        settings.stack_name,
        settings=settings,
        env=env,
        description="LoRA LLM on a SageMaker endpoint behind API Gateway (lora-endpoint)",
    )
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return stack


def unknown_context_keys(app: App) -> list[str]:
    """Context keys that neither this app nor the toolkit reads."""
    known = known_keys()
    return sorted(
        key for key in app.node.get_all_context()
        if key not in known and ":" not in key and not key.startswith("@") and key not in _TOOLKIT_KEYS
    )


def warnings(assembly: CloudAssembly) -> list[str]:
    """The warning annotations of every stack (e.g. why network isolation is off)."""
    return [str(message.entry.data) for stack in assembly.stacks for message in stack.messages
            if message.level == SynthesisMessageLevel.WARNING]


def main() -> int:
    """Synthesize; bad context prints one line naming the key and exits 2 (no stack trace)."""
    # Run by the CDK CLI, CDK_OUTDIR and CDK_CONTEXT_JSON come from the environment; run directly
    # (`make synth`), the assembly goes to ./cdk.out.
    app = App(context=dict(FEATURE_FLAGS), outdir=os.environ.get("CDK_OUTDIR", "cdk.out"))
    try:
        settings = DeploymentSettings.from_context(app)
    except ContextError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for key in unknown_context_keys(app):
        print(f"warning: context key '{key}' is not used by this app (typo?)", file=sys.stderr)
    build(app, settings)
    assembly = app.synth()
    # A CDK toolkit (it sets CDK_CLI_ASM_VERSION) prints annotations itself; run directly, print the warnings.
    if "CDK_CLI_ASM_VERSION" not in os.environ:
        for warning in warnings(assembly):
            print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
