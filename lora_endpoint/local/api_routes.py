"""The API Gateway routes of the deployed stack, served locally with the same validation and statuses.

Each route checks its body against the request model the stack's API Gateway validates with - both
come from the handler's contract (``lora_endpoint/contract/api.py``), the one source of the request schemas - then
goes through ``handle()`` with the caller's ``Content-Type``, ``Accept`` and SageMaker headers, as the
deployed integration forwards them. The container's status reaches the caller as the stack maps it
(400/404/406/413/415/422/429/500/503 pass through, 507 becomes 503, any other error 500) with the
container's JSON body - in async mode DJL's own ``{"code", "error"}``, whose ``error`` starts with the
handler's machine-readable type - and a generic ``model_error`` body for one that is not JSON. One difference
on purpose: locally ``"stream": true`` streams (JSON lines, or SSE for chat); API Gateway's AWS
integration cannot stream, so the deployed models reject it.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lora_endpoint.contract.api import PASSTHROUGH_CONTAINER_STATUSES, request_schemas, schema_errors
from lora_endpoint.contract.errors import HandlerError, error_body, full_error_body
from lora_endpoint.handler.body import parse_json
from lora_endpoint.handler.media import JSON, check_content_type

from .djl_io import Answer
from .endpoint import INFO_BODY, ClosingStreamingResponse, EndpointState, NotReady, wants_stream
from .streaming import pump_answer

# Local routes may stream; the deployed models refuse ``stream: true``.
LOCAL_SCHEMAS: dict[str, dict[str, Any]] = request_schemas(streaming=True)
# Request headers the deployed integration passes on to the runtime (and so to the container).
FORWARDED = ("content-type", "accept", "x-amzn-sagemaker-")


def local_schema(name: str) -> dict[str, Any]:
    """The request model of route ``name`` (``Generate``, ``Rag``, ``ChatCompletion``) as served locally."""
    return LOCAL_SCHEMAS[name]


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

    async def through_handler(headers: dict[str, str], body: bytes) -> Response:
        call = state.call(headers, body)
        try:
            answer = await state.invoke(call, stream=wants_stream(body))
        except NotReady:
            return _error(503, "model_not_ready", "the model is not ready yet; retry with backoff")
        return _render(answer)

    async def validated(request: Request, model: str) -> Response:
        raw = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower().startswith(FORWARDED)}
        try:
            check_content_type(request.headers.get("content-type"))
            data = parse_json(raw, max_bytes=len(raw))  # the body is within the server's cap already
        except HandlerError as err:
            return JSONResponse(err.body(), status_code=err.status)
        problems = schema_errors(data, local_schema(model))
        if problems:
            return _error(400, "invalid_request", f"Invalid request body: {'; '.join(problems[:5])}",
                          problems[0].split(" ")[0])
        return await through_handler(headers, raw)

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

    @api.get("/model/info", summary="Base model, adapters and limits")
    async def model_info() -> Response:
        return await through_handler({"Content-Type": JSON}, INFO_BODY)

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
        return ClosingStreamingResponse(pump_answer(answer), status_code=status, media_type=answer.content_type)
    if status >= 300:
        return error_response(status, answer.body)
    return Response(answer.body, status_code=status, media_type=answer.content_type)


def error_response(status: int, body: bytes) -> JSONResponse:
    """A container's error answer with ``status``, in the project's error body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        return _error(status, "model_error", "the model server failed to answer")
    # DJL's async-mode error body ({"code", "error": "type: message"}) in the project's shape,
    # as the deployed API's model_error template writes it
    return JSONResponse(full_error_body(data, status), status_code=status)
