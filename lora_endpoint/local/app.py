"""The FastAPI app: the container contract (``GET /ping``, ``POST /invocations``), the SageMaker runtime
API, the API Gateway routes and the adapter routes, all answered through the entry module (``handle()``,
``register_adapter()`` ...) and DJL's frontend for the package's mode (``async_frontend`` or the sync
``batcher``); the local routes, ``GET /local/stats`` and ``GET /metrics`` (Prometheus, see ``metrics``); and
the playground page, ``GET /playground`` (see ``playground_page``).

The model loads once the server is up (the async init call on the server's loop, the sync one on a
worker thread): ``/ping`` answers 503 until the init call has succeeded, 200 after. Every body is read
within a size cap and a deadline first (``limits``), and every error the server itself produces
(unknown route, wrong method, an unexpected failure) is the project's JSON error body. At shutdown
``DrainingServer`` starts the endpoint's drain (see ``endpoint``), uvicorn stops accepting and waits
for in-flight requests, then the lifespan drains the frontend.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from lora_endpoint.contract.errors import error_body, internal_error_body

from . import (
    DEFAULT_ENDPOINT_NAME,
    adapter_routes,
    api_routes,
    base_component_name,
    metrics,
    playground_page,
    runtime_api,
)
from .adapter_registry import AdapterRegistry
from .async_frontend import AsyncFrontend
from .batcher import Batcher
from .endpoint import ClosingStreamingResponse, EndpointState, Frontend, NotReady, wants_stream
from .limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES, BodyLimits
from .package import ServedModel
from .streaming import pump_answer

# Error types for the statuses the routing layer answers by itself.
_HTTP_TYPES = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request", 413: "payload_too_large"}

log = logging.getLogger("lora_endpoint.local")


def create_app(
    served: ServedModel,
    *,
    batch_size: int = 1,
    max_batch_delay_ms: int = 0,
    endpoint_name: str = DEFAULT_ENDPOINT_NAME,
    drain_timeout_s: float = 60.0,
    on_load_failure: Callable[[BaseException], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    base_component: str | None = None,
) -> FastAPI:
    """An app serving ``served``; it loads the model (init call) at start-up unless it is ready already.
    ``batch_size`` and ``max_batch_delay_ms`` are the sync mode's batching (async mode has none);
    ``base_component`` is the inference component name of the base model (default ``<endpoint>-base``)."""
    frontend: Frontend = AsyncFrontend(served) if served.async_mode else Batcher(
        served.handle, served.djl, batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms)
    state = EndpointState(served, frontend, endpoint_name, drain_timeout_s=drain_timeout_s)
    adapters = AdapterRegistry(state, base_component=base_component or base_component_name(endpoint_name))
    prometheus = metrics.PrometheusMetrics(served)
    served.when_ready(prometheus.attach)  # before the first request is let in, so every request counts

    async def load() -> None:
        try:
            await (served.aload() if served.async_mode else asyncio.to_thread(served.load))
            log.info("model loaded from %s; serving", served.model_dir)
        except Exception as err:
            log.error("model load failed: %s", served.failed or err)
            if on_load_failure is not None:
                on_load_failure(err)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        frontend.start()
        loading = None if served.ready.is_set() else asyncio.create_task(load(), name="load-model")
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                await asyncio.wait([loading], timeout=drain_timeout_s)
            await frontend.drain(drain_timeout_s)
            if on_shutdown is not None:  # before uvicorn re-raises a captured SIGTERM / SIGINT
                on_shutdown()

    app = FastAPI(
        title="lora-endpoint (local)",
        summary="A model package served through the container's handle(): SageMaker container contract, "
                "runtime API and the API Gateway routes.",
        version="1",
        lifespan=lifespan,
    )
    app.state.endpoint = state
    app.state.adapters = adapters
    app.state.metrics = prometheus
    app.add_middleware(BodyLimits, max_bytes=max_body_bytes, timeout_s=body_timeout_s)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        kind = _HTTP_TYPES.get(exc.status_code, "http_error")
        return JSONResponse(error_body(exc.status_code, kind, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse(internal_error_body(), status_code=500)

    @app.get("/ping", tags=["container contract"], summary="200 once the model is loaded, 503 before")
    async def ping() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "Healthy"})
        return JSONResponse({"status": "Unhealthy" if served.failed else "Loading"}, status_code=503)

    @app.post("/invocations", tags=["container contract"], summary="One request to handle()",
              openapi_extra={"requestBody": {"required": True,
                                             "content": {"application/json": {"schema": {"type": "object"}}}}})
    async def invocations(request: Request) -> Response:
        body = await request.body()
        stream = wants_stream(body)
        try:
            answer = await state.invoke(state.call(dict(request.headers), body), stream=stream)
        except NotReady as err:
            return JSONResponse(error_body(503, "model_not_ready", f"the model is not ready: {err}"), status_code=503)
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
        if answer.stream is not None:
            return ClosingStreamingResponse(pump_answer(answer, state.expired), status_code=answer.status,
                                            media_type=answer.content_type, headers=headers)
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type, headers=headers)

    @app.get("/local/stats", tags=["local"],
             summary="The DJL mode, the handler engine's counters and (sync mode) the batches formed")
    async def stats() -> JSONResponse:
        body: dict[str, Any] = {"mode": served.mode, "engine": served.engine_stats()}
        batches = frontend.report()
        if batches is not None:
            body["batcher"] = batches
        return JSONResponse(body)

    @app.get("/metrics", tags=["local"], response_class=Response,
             summary="Prometheus metrics (text format): requests, tokens, latencies, errors, engine gauges; "
                     "answers while the model loads")
    async def prometheus_metrics() -> Response:
        return Response(prometheus.exposition(), media_type=metrics.CONTENT_TYPE)

    app.include_router(runtime_api.router(state, adapters))
    app.include_router(api_routes.router(state))
    app.include_router(adapter_routes.router(state, adapters))
    app.include_router(playground_page.router(playground_page.local_target(endpoint_name)))
    return app


class DrainingServer(uvicorn.Server):
    """uvicorn's server, telling the endpoint when shutdown begins so that it drains (see ``endpoint``)."""

    def __init__(self, config: uvicorn.Config, *, endpoint: EndpointState) -> None:
        super().__init__(config)
        self.endpoint = endpoint

    async def shutdown(self, sockets: Any = None) -> None:
        self.endpoint.begin_drain()
        await super().shutdown(sockets=sockets)
