"""The playground's proxy: the local endpoint's playground page, served on localhost, its calls forwarded to
any target the clients can call (``lora-endpoint playground``).

The page calls its own origin - ``GET /v1/models``, ``POST /predict``, ``/rag``, ``/v1/chat/completions`` -
as it does on the local endpoint; here each call goes through a ``Target`` (``clients.target``): the local
endpoint, a SageMaker endpoint through boto3, or the API Gateway routes (SigV4 or an API key). So the browser
never holds AWS credentials: the proxy signs with the user's own. The model list comes from the target's
model info (``{"task": "info"}``, which every door answers) in the shape of the local ``GET /v1/models``.
Streams are handed on as they arrive; a target that cannot stream (API Gateway's REST integration) is
asked for whole answers, and the page shows them whole. Errors reach the page with the target's status in
the project's error body (``contract.errors``), as the deployed API renders them.

The proxy calls with the user's credentials, so it answers only its own page: a ``Host`` that is not one
of its names is refused (DNS rebinding), so is a request from another origin, and the forwarded routes take
only ``Content-Type: application/json`` (which another site cannot send without a CORS preflight, which
the proxy never grants).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from lora_endpoint.contract.errors import error_body, full_error_body
from lora_endpoint.local import DEFAULT_ENDPOINT_NAME, playground_page
from lora_endpoint.local.adapter_routes import model_list

from .target import HttpTarget, RuntimeTarget, Target

log = logging.getLogger("lora_endpoint.playground")

# The page's routes -> the target's route names (``clients.target.ROUTES``).
FORWARDED = {"/predict": "predict", "/rag": "rag", "/v1/chat/completions": "chat"}
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's payload limit
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def is_loopback(url: str | None) -> bool:
    return bool(url) and (urlsplit(url).hostname or "") in LOOPBACK


def target_info(target: Target, *, streaming: bool = True) -> dict[str, Any]:
    """What the page shows and writes its snippets for (see ``playground_page.TargetInfo``). A deployed API
    Gateway cannot stream, so its answers are asked for whole whatever ``streaming`` says."""
    info = playground_page.target_fields(target=target.describe())
    if isinstance(target, HttpTarget):
        local = is_loopback(target.base)
        info.update(kind="local" if local else "api", url=target.base, sigv4=target.credentials is not None,
                    api_key=bool(target.api_key), region=target.region or "us-east-1")
        if local:  # the boto3 snippet calls its runtime API, which answers to this name
            info["endpoint_name"] = DEFAULT_ENDPOINT_NAME
        streaming = streaming and local
    elif isinstance(target, RuntimeTarget):
        info.update(kind="local" if target.endpoint_url else "sagemaker", url=target.endpoint_url,
                    endpoint_name=target.endpoint_name, region=target.client.meta.region_name or "us-east-1",
                    profile=target.profile, inference_component=target.inference_component)
    info["streaming"] = streaming
    return info


def models_from_info(info: dict[str, Any], components: Iterable[str] = (), created: int | None = None
                     ) -> dict[str, Any]:
    """Model info (the handler's ``{"task": "info"}`` answer) as the local endpoint's ``GET /v1/models``
    (``adapter_routes.model_list``): the base first, then each adapter with ``parent`` the base; then the
    adapter inference components ``components``, marked ``inference_component`` (a package adapter of the
    same name is the component's: that is what the name reaches)."""
    live = list(dict.fromkeys(components))
    package = [{"name": str(a["name"])} for a in info.get("adapters") or []
               if isinstance(a, dict) and a.get("name") and str(a["name"]) not in live]
    listed = model_list({"base_model": info.get("base_model") or "base", "context_length": info.get("context_length"),
                         "adapters": package + [{"name": name} for name in live]}, created)
    for model in listed["data"][1 + len(package):]:
        model["inference_component"] = model["id"]
    return listed


def adapter_components(target: Target) -> list[str]:
    """The adapter inference components on the target's base component: a deployed endpoint named with
    ``--inference-component`` (its base) has adapters the base's model info does not list. Empty for any
    other target, and when the list cannot be read (e.g. no ``sagemaker:ListInferenceComponents``: the
    package's adapters are still listed)."""
    if not isinstance(target, RuntimeTarget) or target.endpoint_url or not target.inference_component:
        return []
    from botocore.exceptions import BotoCoreError, ClientError

    from .components import endpoint_components

    try:
        found = endpoint_components(target.control, target.endpoint_name)
    except (BotoCoreError, ClientError) as err:
        log.warning("cannot list the adapter components of %s (%s): only the package's adapters are shown",
                    target.endpoint_name, err)
        return []
    return [c.name for c in found if c.base == target.inference_component]


def _named_adapter(route: str, body: dict[str, Any]) -> tuple[str, str] | None:
    """The body's key and the one adapter it names (``adapters`` as a string, or chat's ``model``)."""
    key = "model" if route == "chat" else "adapters"
    value = body.get(key)
    return (key, value) if isinstance(value, str) else None


def _aws_type(code: str) -> str:
    """``ValidationError`` -> ``validation_error``: an AWS error code as an error body's type."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", code).lower() or "aws_error"


def error_json(status: int, body: bytes) -> dict[str, Any]:
    """The target's error answer in the project's error body: ours as it is, DJL async mode's
    ``{"code", "error"}`` as the deployed API renders it, an AWS error (``Code``, ``Message``) with its code
    as the type, anything else as ``upstream_error`` with the start of its text."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        data = None
    if isinstance(data, dict) and (isinstance(data.get("type"), str) or isinstance(data.get("error"), str)):
        return full_error_body(data, status)
    if isinstance(data, dict) and isinstance(data.get("Message", data.get("message")), str):
        return error_body(status, _aws_type(str(data.get("Code") or data.get("__type") or "")),
                          str(data.get("Message", data.get("message"))))
    text = body.decode("utf-8", errors="replace").strip()[:500]
    return error_body(status, "upstream_error", text or f"the target answered {status} with no body")


def _error(status: int, error_type: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(status, error_type, message), status_code=status)


class LocalOnly:
    """Answers 403 to a request for another host name (DNS rebinding) or from another origin."""

    def __init__(self, app: ASGIApp, *, hosts: Iterable[str]) -> None:
        self.app = app
        self.hosts = frozenset(h.lower().strip("[]") for h in hosts)

    def _problem(self, headers: dict[bytes, bytes]) -> str | None:
        host = headers.get(b"host", b"").decode("latin-1")
        if (urlsplit("//" + host).hostname or "") not in self.hosts:
            return f"the playground proxy answers only to {', '.join(sorted(self.hosts))}, not host {host[:100]!r}"
        origin = headers.get(b"origin")
        if origin is not None and (urlsplit(origin.decode("latin-1")).hostname or "") not in self.hosts:
            return "the playground proxy answers only its own page, not requests from another origin"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            problem = self._problem(dict(scope["headers"]))
            if problem:
                await _error(403, "forbidden", problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_proxy_app(target: Target, *, info: dict[str, Any] | None = None,
                     hosts: Iterable[str] = LOOPBACK) -> FastAPI:
    """The proxy for ``target``; ``info`` is what the page is told (default ``target_info(target)``), ``hosts``
    the names it answers to."""
    shown = info if info is not None else target_info(target)
    streaming = bool(shown.get("streaming"))
    app = FastAPI(title="lora-endpoint playground", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(LocalOnly, hosts=hosts)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, "not_found" if exc.status_code == 404 else "http_error", str(exc.detail))

    app.include_router(playground_page.router(lambda request: shown))

    @app.get("/")
    async def root() -> Response:
        return RedirectResponse("/playground")

    # The adapter components found by the last model list: a column for one of them goes to its component.
    components: set[str] = set()

    @app.get("/v1/models")
    async def models() -> Response:
        reply = await run_in_threadpool(target.call, "info")
        if reply.status == 0:
            return _error(502, "upstream_unreachable", reply.text[:300])
        data = reply.json()
        if not reply.ok or not isinstance(data, dict):
            return JSONResponse(error_json(reply.status if not reply.ok else 502, reply.body),
                                status_code=reply.status if not reply.ok else 502)
        live = await run_in_threadpool(adapter_components, target)
        components.clear()
        components.update(live)
        return JSONResponse(models_from_info(data, live))

    def forwarder(route: str) -> Callable[[Request], Any]:
        async def forward(request: Request) -> Response:
            media = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                return _error(415, "unsupported_media_type",
                              "the playground proxy takes Content-Type: application/json")
            raw = await request.body()
            if len(raw) > MAX_BODY_BYTES:
                return _error(413, "payload_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as err:
                return _error(400, "invalid_request", f"the body is not JSON: {err}")
            if not isinstance(body, dict):
                return _error(400, "invalid_request", "the body must be a JSON object")
            stream = bool(body.pop("stream", False)) and streaming
            if not stream:
                body.pop("stream_options", None)
            # The page names the adapter in the body (adapters / model), so concurrent columns share no
            # per-call state of the target (RuntimeTarget's adapter header is per instance). An adapter that is
            # its own inference component is reached by naming that component instead.
            named = _named_adapter(route, body)
            if named is not None and named[1] in components and isinstance(target, RuntimeTarget):
                del body[named[0]]
                opened = await run_in_threadpool(partial(target.open, route, body, stream=stream,
                                                         component=named[1]))
            else:
                opened = await run_in_threadpool(target.open, route, body, stream=stream)
            if opened.status == 0:
                text = b"".join(opened.chunks).decode("utf-8", errors="replace")[:300]
                return _error(502, "upstream_unreachable", text)
            if opened.status >= 300:
                whole = await run_in_threadpool(b"".join, opened.chunks)
                return JSONResponse(error_json(opened.status, whole), status_code=opened.status)
            return StreamingResponse(opened.chunks, status_code=opened.status,
                                     media_type=opened.content_type or "application/json")

        return forward

    for path, route in FORWARDED.items():
        app.add_api_route(path, forwarder(route), methods=["POST"])
    return app
