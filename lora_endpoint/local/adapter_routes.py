"""Adapter routes: SageMaker's container standard, DJL's update, and OpenAI's model list.

- ``POST /adapters`` with ``{"name", "src", "preload": true, "pin": false}`` and
  ``DELETE /adapters/{adapter_name}``, as AWS's container standard defines them (PyPI
  ``model-hosting-container-standards``, ``sagemaker.lora``: its register request model and routes, the
  ``X-Amzn-SageMaker-Adapter-Alias`` header). As there, fields may come as query parameters instead of a
  body, the form DJL's management API takes (``POST /adapters?name=a1&src=/path``).
- ``POST /adapters/{adapter_name}/update`` (DJL's management API; the standard has no update route):
  ``src``, ``preload`` and ``pin`` are optional, what is left out keeps its value.
- ``GET /v1/models``: the base model and every adapter, in vLLM's shape (``parent`` names the base).

Each call goes to the entry module's ``register_adapter`` / ``update_adapter`` / ``unregister_adapter``
(``adapter_registry``). Success answers 200 ``{"status": "Adapter <alias> registered"}`` as DJL's
management API does (the standard's message; the handler's own ``message`` when it gives one) plus
``adapter``, the handler's description of it; a refusal answers the handler's status with its error in
the project's JSON error body.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from lora_endpoint.contract.errors import HandlerError, InvalidRequest, error_body, shown
from lora_endpoint.handler.body import parse_json
from lora_endpoint.handler.fields import read_bool, read_str, reject_unknown
from lora_endpoint.handler.media import JSON, check_content_type

from .adapter_registry import AdapterRegistry, Registration, djl_bool
from .api_routes import error_response
from .djl_io import Answer
from .endpoint import EndpointState, NotReady, unavailable_answer

ALIAS_HEADER = "X-Amzn-SageMaker-Adapter-Alias"
# A registration is a few short fields; anything near this is not one.
MAX_ADAPTER_BODY_BYTES = 64 * 1024
OWNER = "lora-endpoint"
REGISTER_FIELDS = ("name", "src", "preload", "pin")
UPDATE_FIELDS = ("src", "preload", "pin")

REGISTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "src"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "description": "the adapter's name, as requests name it"},
        "src": {"type": "string", "minLength": 1,
                "description": "the adapter folder (peft's save_pretrained): a local path or an s3:// prefix"},
        "preload": {"type": "boolean", "default": True, "description": "load it now rather than on first use"},
        "pin": {"type": "boolean", "default": False, "description": "never evict it from the device"},
    },
}
UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {key: REGISTER_SCHEMA["properties"][key] for key in UPDATE_FIELDS},
}


def _doc(schema: dict[str, Any], required: bool) -> dict[str, Any]:
    return {"requestBody": {"required": required, "content": {JSON: {"schema": schema}}}}


def _fields(raw: bytes, request: Request, allowed: tuple[str, ...], where: str) -> dict[str, Any]:
    """The request's fields: its JSON body, or with no body its query parameters (DJL's form)."""
    query = dict(request.query_params)
    if raw.strip():
        check_content_type(request.headers.get("content-type"))
        data = parse_json(raw, max_bytes=MAX_ADAPTER_BODY_BYTES)
        if query:
            raise InvalidRequest(f"give the fields of {where} in the JSON body or as query parameters, not both")
    else:
        data = {key: _query_value(key, value) for key, value in query.items()}
    reject_unknown(data, allowed, where)
    return data


def _query_value(key: str, value: str) -> Any:
    """Query parameters are text: the options are read as DJL reads them, ``true`` / ``false``."""
    if key in ("preload", "pin"):
        if value.lower() not in ("true", "false"):
            raise InvalidRequest(f"{key} must be true or false, got {shown(value)}", param=key)
        return value.lower() == "true"
    return value


def _required_text(data: Mapping[str, Any], key: str) -> str:
    value = read_str(data, key, key)
    if value is None:
        raise InvalidRequest(f"{key} is required", param=key)
    if not value.strip():
        raise InvalidRequest(f"The parameter {key} cannot be an empty string", param=key)
    return value


def _options(data: Mapping[str, Any], defaults: Mapping[str, bool | None]) -> dict[str, str]:
    """``preload`` / ``pin`` that are set (or have a default) as DJL passes them on."""
    options = {}
    for key, default in defaults.items():
        value = read_bool(data, key, key, False) if data.get(key) is not None else default
        if value is not None:
            options[key] = djl_bool(value)
    return options


def parse_register(fields: Mapping[str, Any], alias: str | None) -> Registration:
    """A registration from the standard's fields: ``name`` and ``src`` non-empty strings, the options booleans."""
    name = _required_text(fields, "name")
    src = _required_text(fields, "src")
    return Registration(name=name, src=src, alias=alias or name,
                        options=_options(fields, {"preload": True, "pin": False}))


def _from_answer(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, headers=answer.headers, media_type=JSON)


def _error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, error_type, message), status_code=status)


def _done(answer: Answer, message: str) -> Response:
    """The handler's answer as the route's: DJL's status message and the handler's description of the
    adapter (its ``{"message", "adapter"}``; ``message`` the default), or its error."""
    if answer.status >= 300:
        return error_response(answer.status, answer.body)
    try:
        said = json.loads(answer.body) if answer.body.strip() else None
    except (ValueError, UnicodeDecodeError):
        said = None
    said = said if isinstance(said, dict) else {}
    body: dict[str, Any] = {"status": said["message"] if isinstance(said.get("message"), str) else message}
    if isinstance(said.get("adapter"), dict):
        body["adapter"] = said["adapter"]
    return JSONResponse(body)


def router(state: EndpointState, adapters: AdapterRegistry) -> APIRouter:
    api = APIRouter(tags=["adapters"])

    def unavailable() -> Response | None:
        if not state.ready:
            return _error(503, "model_not_ready", "the model is not ready yet; retry with backoff")
        if state.draining:
            return _from_answer(unavailable_answer("the endpoint is shutting down; retry"))
        return None

    @api.post("/adapters", summary="Register a LoRA adapter (SageMaker's container standard)",
              openapi_extra=_doc(REGISTER_SCHEMA, required=False))
    async def register(request: Request) -> Response:
        try:
            fields = _fields(await request.body(), request, REGISTER_FIELDS, "an adapter registration")
            registration = parse_register(fields, request.headers.get(ALIAS_HEADER))
        except HandlerError as err:
            return JSONResponse(err.body(), status_code=err.status)
        if registration.name == adapters.base_component:
            return _error(409, "adapter_conflict", f"{shown(registration.name)} is the base model's inference "
                                                   "component; give the adapter another name")
        refused = unavailable()
        if refused is not None:
            return refused
        return _done(await adapters.register(registration), f"Adapter {registration.alias} registered")

    @api.post("/adapters/{adapter_name}/update", summary="Update an adapter's src or options (DJL's management API)",
              openapi_extra=_doc(UPDATE_SCHEMA, required=False))
    async def update(adapter_name: str, request: Request) -> Response:
        alias = request.headers.get(ALIAS_HEADER)
        try:
            fields = _fields(await request.body(), request, UPDATE_FIELDS, "an adapter update")
            src = _required_text(fields, "src") if fields.get("src") is not None else None
            options = _options(fields, {"preload": None, "pin": None})
        except HandlerError as err:
            return JSONResponse(err.body(), status_code=err.status)
        refused = unavailable()
        if refused is not None:
            return refused
        answer = await adapters.update(adapter_name, alias, src, options)
        return _done(answer, f"Adapter {alias or adapter_name} updated")

    @api.delete("/adapters/{adapter_name}", summary="Unregister a LoRA adapter (SageMaker's container standard)")
    async def unregister(adapter_name: str, request: Request) -> Response:
        alias = request.headers.get(ALIAS_HEADER)
        refused = unavailable()
        if refused is not None:
            return refused
        return _done(await adapters.unregister(adapter_name, alias), f"Adapter {alias or adapter_name} unregistered")

    @api.get("/v1/models", summary="The base model and its adapters (OpenAI's model list, vLLM's fields)")
    async def models() -> Response:
        try:
            answer = await state.model_info()
        except NotReady:
            return _error(503, "model_not_ready", "the model is not ready yet; retry with backoff")
        if answer.status >= 300:
            return error_response(answer.status, answer.body)
        try:
            return JSONResponse(model_list(json.loads(answer.body)))
        except (ValueError, UnicodeDecodeError, TypeError, KeyError):
            return _error(500, "model_error", "model info did not describe the model")

    return api


def model_list(info: Mapping[str, Any], created: int | None = None) -> dict[str, Any]:
    """``{"object": "list", "data": [...]}``: the base model, then each adapter with the base as ``parent``."""
    base = str(info["base_model"])
    stamp = int(time.time()) if created is None else created
    card = {"object": "model", "created": stamp, "owned_by": OWNER}
    data = [{"id": base, **card, "root": base, "parent": None, "max_model_len": info.get("context_length")}]
    data += [{"id": adapter["name"], **card, "root": adapter["name"], "parent": base, "max_model_len": None}
             for adapter in info.get("adapters") or []]
    return {"object": "list", "data": data}
