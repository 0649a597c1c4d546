"""The SageMaker runtime REST API, checked against botocore's service model (sagemaker-runtime 2017-05-13).

``POST /endpoints/{EndpointName}/invocations`` (InvokeEndpoint) and
``POST /endpoints/{EndpointName}/invocations-response-stream`` (InvokeEndpointWithResponseStream), so
unchanged boto3 code works with ``endpoint_url=``. Errors use the modelled shapes: ``ValidationError``
(400), ``ModelNotReadyException`` (429) and ``ModelError`` (424, with ``OriginalStatusCode``,
``OriginalMessage`` and ``LogStreamArn``), named by the ``x-amzn-ErrorType`` header; a failure after
the stream started is a ``ModelStreamError`` event.

``InferenceComponentName`` (header ``X-Amzn-SageMaker-Inference-Component``) picks what answers, as on an
endpoint with inference components: the base component's name the base model, an adapter's name that
adapter (the container gets it in ``X-Amzn-SageMaker-Adapter-Identifier``), any other name a
``ValidationError``. Without the header the endpoint answers as a variant endpoint does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import COMPONENT_NAME_RE, MAX_COMPONENT_NAME, eventstream
from .adapter_registry import AdapterRegistry
from .djl_io import CUSTOM_ATTRIBUTES, Answer
from .endpoint import ClosingStreamingResponse, EndpointState, NotReady
from .streaming import StreamExpired, StreamFailed, close_stream, guarded

ACCOUNT = "000000000000"
COMPONENT_HEADER = "X-Amzn-SageMaker-Inference-Component"
ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
REGION = "local"
MAX_CUSTOM_ATTRIBUTES = 1024
# Request headers the runtime forwards to the container (boto3's signing headers stay behind).
_FORWARD = ("content-type", "accept", "x-amzn-sagemaker-")
_STREAM_ACCEPT = "X-Amzn-SageMaker-Accept"
_BODY_DOC = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}


def aws_error(code: str, status: int, members: dict[str, Any]) -> Response:
    """An error as a rest-json AWS service sends it: ``x-amzn-ErrorType`` names the modelled shape."""
    return Response(json.dumps(members), status_code=status, media_type="application/json",
                    headers={"x-amzn-ErrorType": code})


def validation_error(message: str) -> Response:
    return aws_error("ValidationError", 400, {"Message": message})


def model_error(state: EndpointState, answer: Answer) -> Response:
    """A non-2xx from the container, as the runtime reports it."""
    kind = "client" if answer.status < 500 else "server"
    original = answer.body.decode("utf-8", errors="replace")
    log_stream = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/sagemaker/Endpoints/{state.endpoint_name}"
    return aws_error("ModelError", 424, {
        "Message": f"Received {kind} error ({answer.status}) from primary with message \"{original}\". "
                   f"See {log_stream} for more information.",
        "OriginalStatusCode": answer.status,
        "OriginalMessage": original,
        "LogStreamArn": log_stream,
    })


def _check(state: EndpointState, name: str, request: Request) -> Response | None:
    if name != state.endpoint_name:
        return validation_error(f"Endpoint {name} of account {ACCOUNT} not found.")
    custom = request.headers.get(CUSTOM_ATTRIBUTES, "")
    if len(custom) > MAX_CUSTOM_ATTRIBUTES:
        return validation_error(
            f"1 validation error detected: Value at 'customAttributes' failed to satisfy constraint: "
            f"Member must have length less than or equal to {MAX_CUSTOM_ATTRIBUTES}")
    if not state.ready:
        return aws_error("ModelNotReadyException", 429, {"Message": state.served.failed or "Model is not ready"})
    return None


def _forwarded(request: Request, *, streaming: bool) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower().startswith(_FORWARD)}
    if streaming:
        accept = headers.pop(_STREAM_ACCEPT.lower(), None)
        headers.pop("accept", None)
        if accept:
            headers["Accept"] = accept
    return headers


async def _component(adapters: AdapterRegistry, headers: dict[str, str]) -> Response | None:
    """Apply ``InferenceComponentName``: the base component serves the base model, an adapter's component
    that adapter (named to the container in the adapter header, as SageMaker does); anything else, or a
    name outside the model's pattern, is a ValidationError. No header: the endpoint serves as a variant."""
    name = headers.pop(COMPONENT_HEADER.lower(), None)
    if name is None:
        return None
    if len(name) > MAX_COMPONENT_NAME or not COMPONENT_NAME_RE.fullmatch(name):
        return validation_error(
            f"1 validation error detected: Value '{name[:100]}' at 'inferenceComponentName' failed to satisfy "
            f"constraint: Member must satisfy regular expression pattern: {COMPONENT_NAME_RE.pattern} and have "
            f"length less than or equal to {MAX_COMPONENT_NAME}")
    headers.pop(ADAPTER_HEADER.lower(), None)  # the component decides, not the caller
    if name == adapters.base_component:
        return None
    if not await adapters.is_adapter(name):
        return validation_error(f"Inference component {name} of account {ACCOUNT} not found on endpoint "
                                f"{adapters.state.endpoint_name}.")
    headers[ADAPTER_HEADER] = name
    return None


def _ok_headers(state: EndpointState, answer: Answer, content_type_header: str) -> dict[str, str]:
    headers = {content_type_header: answer.content_type, "x-Amzn-Invoked-Production-Variant": state.variant}
    custom = next((v for k, v in answer.headers.items() if k.lower() == CUSTOM_ATTRIBUTES.lower()), None)
    if custom:
        headers[CUSTOM_ATTRIBUTES] = custom
    return headers


def router(state: EndpointState, adapters: AdapterRegistry) -> APIRouter:
    api = APIRouter(tags=["SageMaker runtime"])

    @api.post("/endpoints/{name}/invocations", openapi_extra=_BODY_DOC, summary="InvokeEndpoint")
    async def invoke_endpoint(name: str, request: Request) -> Response:
        problem = _check(state, name, request)
        if problem is not None:
            return problem
        headers = _forwarded(request, streaming=False)
        problem = await _component(adapters, headers)
        if problem is not None:
            return problem
        call = state.call(headers, await request.body())
        try:
            answer = await state.invoke_whole(call)
        except NotReady as err:
            return aws_error("ModelNotReadyException", 429, {"Message": str(err)})
        if answer.status >= 300:
            return model_error(state, answer)
        headers = _ok_headers(state, answer, "Content-Type")
        media = headers.pop("Content-Type")
        return Response(answer.body, status_code=200, media_type=media, headers=headers)

    @api.post("/endpoints/{name}/invocations-response-stream", openapi_extra=_BODY_DOC,
              summary="InvokeEndpointWithResponseStream")
    async def invoke_endpoint_stream(name: str, request: Request) -> Response:
        problem = _check(state, name, request)
        if problem is not None:
            return problem
        headers = _forwarded(request, streaming=True)
        problem = await _component(adapters, headers)
        if problem is not None:
            return problem
        call = state.call(headers, await request.body())
        try:
            answer = await state.invoke(call, stream=True)
        except NotReady as err:
            return aws_error("ModelNotReadyException", 429, {"Message": str(err)})
        if answer.status >= 300:
            return model_error(state, answer)
        headers = _ok_headers(state, answer, "X-Amzn-SageMaker-Content-Type")
        return ClosingStreamingResponse(_frames(answer, state.expired), media_type=eventstream.EVENTSTREAM,
                                        headers=headers)

    return api


async def _frames(answer: Answer, expired: asyncio.Event) -> AsyncIterator[bytes]:
    """PayloadPart events; a stream that fails (or outlives a shutdown's drain) ends with ModelStreamError."""
    if answer.stream is None:
        yield eventstream.payload_part(answer.body)
        return
    chunks = guarded(answer.stream, expired)
    try:
        async for chunk in chunks:
            if chunk:
                yield eventstream.payload_part(chunk)
    except StreamFailed as err:
        yield eventstream.model_stream_error(f"the model stream failed: {err}", "ModelStreamError")
    except StreamExpired:
        yield eventstream.model_stream_error("the endpoint is shutting down", "ModelStreamError")
    finally:
        await close_stream(chunks)
