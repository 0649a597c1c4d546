"""The API Gateway routes of the deployed stack, served locally with the same validation and statuses.

Each route checks its body against the request model the stack's API Gateway validates with
(``cdk/components/api_mapping.py`` ``REQUEST_SCHEMAS``, imported from there), then goes
through ``handle()``. The container's status reaches the caller as the stack maps it (400/404/406/
413/415/422/429/500/503 pass through, 507 becomes 503, any other error 500). One difference on
purpose: locally ``"stream": true`` streams (JSON lines, or SSE for chat); API Gateway's AWS
integration cannot stream, so the deployed models reject it.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from cdk.components.api_mapping import PASSTHROUGH_CONTAINER_STATUSES, REQUEST_SCHEMAS

from .djl_io import JSON, Answer
from .endpoint import EndpointState, NotReady, error_body, wants_stream
from .streaming import pump

# The deployed request models are the one source: cdk/ writes them into API Gateway, this module
# validates with them locally (cdk/components/api_mapping.py imports nothing but the stdlib).
GATEWAY_SCHEMAS: dict[str, dict[str, Any]] = {k: v for k, v in REQUEST_SCHEMAS.items() if k != "Invocation"}


def local_schema(name: str) -> dict[str, Any]:
    """The deployed model with ``stream`` allowed to be true (locally the routes can stream)."""
    schema = copy.deepcopy(GATEWAY_SCHEMAS[name])
    schema["properties"]["stream"] = {"type": "boolean"}
    return schema


_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,), "number": (int, float),
    "integer": (int,),
}


def schema_errors(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:
    """The draft-4 subset the request models use: type, required, properties, items, anyOf, enum, bounds."""
    label = where or "the request body"
    kind = schema.get("type")
    if kind and (not isinstance(value, _TYPES[kind]) or (kind != "boolean" and isinstance(value, bool))):
        return [f"{label} must be of type {kind}"]
    if "anyOf" in schema and all(schema_errors(value, option, where) for option in schema["anyOf"]):
        return [f"{label} does not match any allowed form"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{label} must be one of {schema['enum']}"]
    problems: list[str] = []
    if isinstance(value, dict):
        problems += [f"{where + '.' if where else ''}{key} is required"
                     for key in schema.get("required", []) if key not in value]
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                problems += schema_errors(value[key], sub, f"{where + '.' if where else ''}{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            problems.append(f"{label} must have at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            problems.append(f"{label} must have at most {schema['maxItems']} items")
        if "items" in schema:
            for index, item in enumerate(value):
                problems += schema_errors(item, schema["items"], f"{label}[{index}]")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        problems.append(f"{label} must not be empty")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{label} must be >= {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{label} must be <= {schema['maximum']}")
    return problems


PASSTHROUGH = frozenset(PASSTHROUGH_CONTAINER_STATUSES)


def gateway_status(status: int) -> int:
    """The status the deployed API answers for the container's ``status``."""
    if status < 300 or status in PASSTHROUGH:
        return status
    return 503 if status == 507 else 500


def _error(status: int, error_type: str, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, error_type, message, param), status_code=status)


def _request_doc(name: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {JSON: {"schema": local_schema(name)}}}}


def router(state: EndpointState) -> APIRouter:
    api = APIRouter(tags=["API Gateway routes"])

    async def through_handler(body: bytes) -> Response:
        call = state.call({"Content-Type": JSON, "Accept": "*/*"}, body)
        stream = wants_stream(body)
        try:
            answer = await state.invoke(call, stream=stream)
        except NotReady:
            return _error(503, "model_not_ready", "the model is not ready yet; retry with backoff")
        return _render(answer)

    async def validated(request: Request, model: str) -> Response:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return _error(400, "invalid_request", "request body is not valid JSON")
        problems = schema_errors(data, local_schema(model))
        if problems:
            return _error(400, "invalid_request", f"Invalid request body: {'; '.join(problems)}",
                          problems[0].split(" ")[0])
        return await through_handler(raw)

    @api.post("/predict", summary="Generate (LMI / TGI shape)", openapi_extra=_request_doc("Generate"))
    async def predict(request: Request) -> Response:
        return await validated(request, "Generate")

    @api.post("/rag", summary="Retrieval-augmented generation over given passages", openapi_extra=_request_doc("Rag"))
    async def rag(request: Request) -> Response:
        return await validated(request, "Rag")

    @api.post("/v1/chat/completions", summary="OpenAI-compatible chat completions (SSE when stream)",
              openapi_extra=_request_doc("ChatCompletion"))
    async def chat(request: Request) -> Response:
        return await validated(request, "ChatCompletion")

    @api.get("/model/info", summary="Base model, adapters, limits and memory")
    async def model_info() -> Response:
        return await through_handler(b'{"task": "info"}')

    @api.get("/health", summary="Endpoint status")
    async def health() -> Response:
        if state.ready:
            body = {"status": "InService", "healthy": True, "endpoint": state.endpoint_name, "instances": 1}
            return JSONResponse(body)
        status = "Failed" if state.served.failed else "Creating"
        return JSONResponse({"status": status, "healthy": False, "endpoint": state.endpoint_name, "instances": 0},
                            status_code=503)

    return api


def _render(answer: Answer) -> Response:
    status = gateway_status(answer.status)
    if answer.stream is not None and status < 300:
        return StreamingResponse(pump(answer.stream), status_code=status, media_type=answer.content_type)
    if status >= 300 and not answer.body.strip().startswith(b"{"):
        return _error(status, "model_error", "the model server failed to answer")
    return Response(answer.body, status_code=status, media_type=answer.content_type)
