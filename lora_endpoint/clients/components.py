"""Adapter inference components of a deployed endpoint, through boto3's ``sagemaker`` client.

An adapter is live on an endpoint in inference-component mode as its own inference component:
``Specification.BaseInferenceComponentName`` names the base model's component and
``Specification.Container.ArtifactUrl`` the adapter's ``.tar.gz``; it has no compute of its own, and
requests reach it with ``InferenceComponentName=<its name>`` (the container gets that name as the
adapter). Creating and deleting take a while: ``wait`` polls ``describe_inference_component`` until
the component is ``InService`` (or ``Failed``, with its ``FailureReason``), or gone, printing progress.
moto does not model inference components; the tests drive this with botocore's Stubber.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

IN_SERVICE, FAILED = "InService", "Failed"


class ComponentError(Exception):
    """An operation cannot go on; ``exit_code`` says how (see lora_endpoint.commands.adapters)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Component:
    """What ``describe_inference_component`` says about one component."""

    name: str
    endpoint: str
    status: str
    base: str | None
    """The base component an adapter component names; None for a base (model) component."""
    artifact: str | None = None
    model: str | None = None
    copies: str = ""
    failure: str | None = None

    @property
    def is_adapter(self) -> bool:
        return self.base is not None

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> Component:
        spec = described.get("Specification") or {}
        runtime = described.get("RuntimeConfig") or {}
        copies = (f"{runtime.get('CurrentCopyCount', '?')}/{runtime.get('DesiredCopyCount', '?')}"
                  if runtime else "")
        return cls(name=described["InferenceComponentName"], endpoint=described["EndpointName"],
                   status=described.get("InferenceComponentStatus", "?"),
                   base=spec.get("BaseInferenceComponentName"),
                   artifact=(spec.get("Container") or {}).get("ArtifactUrl"), model=spec.get("ModelName"),
                   copies=copies, failure=described.get("FailureReason"))


def _is_not_found(err: Exception) -> bool:
    """describe_inference_component of a name that does not exist: SageMaker's ValidationException."""
    response = getattr(err, "response", None) or {}
    return bool(response.get("Error", {}).get("Code") == "ValidationException")


def describe(client: Any, name: str) -> Component | None:
    """The component ``name``, or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        return Component.from_description(client.describe_inference_component(InferenceComponentName=name))
    except ClientError as err:
        if _is_not_found(err):
            return None
        raise


def endpoint_components(client: Any, endpoint: str) -> list[Component]:
    """Every component on ``endpoint``, described (the list alone does not tell base from adapter)."""
    names: list[str] = []
    token: str | None = None
    while True:
        page = client.list_inference_components(EndpointNameEquals=endpoint, MaxResults=100,
                                                **({"NextToken": token} if token else {}))
        names += [item["InferenceComponentName"] for item in page.get("InferenceComponents", [])]
        token = page.get("NextToken")
        if not token:
            break
    found = [describe(client, name) for name in sorted(names)]
    return [component for component in found if component is not None]


def pick_base(components: list[Component], endpoint: str, wanted: str | None) -> Component:
    """The base component adapters attach to: ``wanted``, or the endpoint's only base component."""
    bases = [c for c in components if not c.is_adapter]
    if wanted is not None:
        match = next((c for c in components if c.name == wanted), None)
        if match is None:
            raise ComponentError(f"endpoint {endpoint} has no inference component {wanted!r}; it has: "
                                 f"{', '.join(c.name for c in components) or 'none'}", 2)
        if match.is_adapter:
            raise ComponentError(f"{wanted!r} is an adapter component (on base {match.base!r}), not a base", 2)
        return match
    if not bases:
        raise ComponentError(f"endpoint {endpoint} has no base inference component: deploy it in inference-"
                             "component mode first (adapter components attach to a base component)", 2)
    if len(bases) > 1:
        raise ComponentError(f"endpoint {endpoint} has {len(bases)} base inference components "
                             f"({', '.join(c.name for c in bases)}): choose one with --base-component", 2)
    return bases[0]


def create_adapter(client: Any, name: str, endpoint: str, base: str, artifact_url: str) -> None:
    """An adapter component: the base component's name and the adapter's archive, nothing else."""
    client.create_inference_component(
        InferenceComponentName=name, EndpointName=endpoint,
        Specification={"BaseInferenceComponentName": base, "Container": {"ArtifactUrl": artifact_url}},
    )


def delete(client: Any, name: str) -> None:
    client.delete_inference_component(InferenceComponentName=name)


class Progress:
    """One line on stderr that updates in place on a terminal; elsewhere a line per change and a
    heartbeat every ``every_s`` seconds (so CI logs show a long wait is still alive)."""

    def __init__(self, enabled: bool, stream: TextIO | None = None, every_s: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.every_s = every_s
        self._last: tuple[str, float] | None = None

    def show(self, text: str, elapsed_s: float) -> None:
        if not self.enabled:
            return
        line = f"{text} ({elapsed_s:.0f} s)"
        if self.tty:
            self.stream.write(f"\r{line}\033[K")
        elif self._last is None or self._last[0] != text or elapsed_s - self._last[1] >= self.every_s:
            self.stream.write(line + "\n")
            self._last = (text, elapsed_s)
        else:
            return
        self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def wait(client: Any, name: str, *, gone: bool, timeout_s: float, poll_s: float, progress: Progress,
         sleep: Callable[[float], None] = time.sleep,
         clock: Callable[[], float] = time.monotonic) -> Component | None:
    """Poll until ``name`` is InService (or, with ``gone``, no longer exists). Failed is exit code 1 with
    SageMaker's FailureReason, running out of time exit code 3 (the change may still complete)."""
    start = clock()
    goal = "deleted" if gone else IN_SERVICE
    try:
        while True:
            component = describe(client, name)
            elapsed = clock() - start
            if component is None:
                if gone:
                    return None
                raise ComponentError(f"inference component {name} disappeared while waiting for it", 1)
            if component.status == FAILED:
                raise ComponentError(f"inference component {name} failed: {component.failure or 'no reason given'}"
                                     " (its logs: CloudWatch log group /aws/sagemaker/InferenceComponents/"
                                     f"{name})", 1)
            if not gone and component.status == IN_SERVICE:
                return component
            progress.show(f"inference component {name}: {component.status}, waiting until {goal}", elapsed)
            if elapsed + poll_s > timeout_s:
                raise ComponentError(f"inference component {name} is still {component.status} after "
                                     f"{elapsed:.0f} s (--timeout {timeout_s:g}); it may still become {goal}: "
                                     "check with `lora-endpoint adapters list`", 3)
            sleep(poll_s)
    finally:
        progress.done()
