"""Which caller headers the invoke routes pass on to the SageMaker runtime, and how.

``InvokeEndpoint`` (botocore's ``sagemaker-runtime`` 2017-05-13 service model) takes ``Content-Type``,
``Accept`` and ``X-Amzn-SageMaker-Custom-Attributes`` (at most 1024 ASCII characters) as headers: these are
mapped one to one from the caller's request. It has no adapter header, and its documentation says not to
rely on headers outside those it lists, so ``X-Amzn-SageMaker-Adapter-Identifier`` cannot be sent as
itself. The request template appends it to the custom attributes instead, as
``X-Amzn-SageMaker-Adapter-Identifier=<name>``: DJL Serving's ``RequestParser`` splits custom attributes on
``;`` and ``=`` into request properties, where the handler reads it exactly like the header.

With inference components the adapter header names the adapter's inference component instead: it becomes
``X-Amzn-SageMaker-Inference-Component`` (``InferenceComponentName`` in the service model), which is the
base component unless an adapter is named; SageMaker then tells the container which adapter to use.
"""

from __future__ import annotations

CONTENT_TYPE = "Content-Type"
ACCEPT = "Accept"
CUSTOM_ATTRIBUTES = "X-Amzn-SageMaker-Custom-Attributes"
ADAPTER = "X-Amzn-SageMaker-Adapter-Identifier"
INFERENCE_COMPONENT = "X-Amzn-SageMaker-Inference-Component"
FORWARDED = (CONTENT_TYPE, ACCEPT, CUSTOM_ATTRIBUTES)


def method_request_parameters() -> dict[str, bool]:
    """The headers the invoke methods declare (all optional) so they can be mapped."""
    return {f"method.request.header.{name}": False for name in (*FORWARDED, ADAPTER)}


def component_parameter(inference_component: str | None) -> dict[str, str]:
    """The runtime's inference component header set to ``inference_component`` (nothing when None)."""
    if inference_component is None:
        return {}
    return {f"integration.request.header.{INFERENCE_COMPONENT}": f"'{inference_component}'"}


def integration_request_parameters(inference_component: str | None = None) -> dict[str, str]:
    """Caller header -> the runtime request header of the same name; with ``inference_component``, that
    component by default (the request template switches it to the adapter's component)."""
    params = {f"integration.request.header.{name}": f"method.request.header.{name}" for name in FORWARDED}
    return {**params, **component_parameter(inference_component)}


def _param(var: str, name: str) -> str:
    # $input.params() looks header names up as spelled: try the canonical and the HTTP/2 (lower-case) one.
    return (f"#set(${var} = \"$!input.params('{name}')\")\n"
            f"#if(${var} == \"\")#set(${var} = \"$!input.params('{name.lower()}')\")#end\n")


# The override is applied after the one-to-one mappings; API Gateway allows one override per header.
INVOKE_REQUEST_TEMPLATE = (
    _param("adapter", ADAPTER)
    + "#if($adapter != \"\")\n"
    + _param("custom", CUSTOM_ATTRIBUTES)
    + f"#if($custom != \"\")#set($custom = \"$custom;\")#end\n"
    f"#set($context.requestOverride.header.{CUSTOM_ATTRIBUTES} = \"${{custom}}{ADAPTER}=$adapter\")\n"
    "#end\n"
    "$input.body"
)

# Inference components: the adapter header picks the adapter's component; without it the static mapping
# (integration_request_parameters) sends the base component's name.
COMPONENT_REQUEST_TEMPLATE = (
    _param("adapter", ADAPTER)
    + "#if($adapter != \"\")\n"
    f"#set($context.requestOverride.header.{INFERENCE_COMPONENT} = $adapter)\n"
    "#end\n"
    "$input.body"
)


def invoke_request_template(inference_component: str | None) -> str:
    """The invoke routes' request template in this endpoint mode."""
    return INVOKE_REQUEST_TEMPLATE if inference_component is None else COMPONENT_REQUEST_TEMPLATE
