"""The playground page: ``GET /playground`` and its two assets, served by the local endpoint and by the
``lora-endpoint playground`` proxy alike.

The page is three static files in ``playground/`` (HTML, CSS, JS; no build step, nothing fetched from the
internet). It calls the same origin's API Gateway routes (``/predict``, ``/rag``, ``/v1/chat/completions``)
and ``GET /v1/models``, and reads ``GET /playground/target`` to say what it is talking to and to write the
"copy request as" snippets. Only the files named in ``ASSETS`` are served (no path from the URL reaches
the disk), each with a Content-Security-Policy that lets the page load and call nothing but its own
origin: model output is only ever put in the page as text (``textContent``), and the policy is the second
line of defence.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

STATIC_DIR = Path(__file__).resolve().parent / "playground"
PAGE = "index.html"
# URL name -> (file in STATIC_DIR, content type).
ASSETS: dict[str, tuple[str, str]] = {
    "playground.css": ("playground.css", "text/css; charset=utf-8"),
    "playground.js": ("playground.js", "text/javascript; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-cache"}

TargetInfo = Callable[[Request], dict[str, Any]]
"""What ``GET /playground/target`` answers: ``kind`` (``local``, ``sagemaker``, ``api``), ``target`` (one line
for people), ``streaming`` (whether the target can stream), and for the snippets ``url`` (the endpoint's HTTP
base, or None for the page's own origin), ``endpoint_name``, ``region``, ``sigv4``, ``api_key``, ``profile`` (the
AWS profile boto3 should use, or None), ``inference_component`` (the ``InferenceComponentName`` its calls
carry, or None)."""


@cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


def target_fields(**fields: Any) -> dict[str, Any]:
    """A ``TargetInfo`` answer: ``fields`` over the defaults (the local endpoint, streaming, no AWS auth)."""
    return {"kind": "local", "target": "", "streaming": True, "url": None, "endpoint_name": "lora-endpoint",
            "region": "us-east-1", "sigv4": False, "api_key": False, "profile": None, "inference_component": None,
            **fields}


def page_url(host: str, port: int) -> str:
    """The page's URL on a server listening on ``host:port`` (a wildcard address is opened as 127.0.0.1)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
    return f"http://{shown}:{port}/playground"


def local_target(endpoint_name: str) -> TargetInfo:
    """The target info of the local endpoint serving the page itself."""
    fields = target_fields(target=f"this local endpoint ({endpoint_name})", endpoint_name=endpoint_name)
    return lambda request: fields


def router(target_info: TargetInfo) -> APIRouter:
    api = APIRouter(tags=["playground"])

    @api.get("/playground", summary="The playground page: base and adapters side by side, streaming",
             response_class=Response)
    async def page() -> Response:
        return Response(_read(PAGE), media_type="text/html; charset=utf-8", headers=HEADERS)

    @api.get("/playground/target", summary="What the playground talks to (for its header and snippets)")
    async def target(request: Request) -> JSONResponse:
        return JSONResponse(target_info(request), headers={"Cache-Control": "no-store"})

    @api.get("/playground/{name}", summary="The playground's CSS and JS", response_class=Response,
             include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, f"no playground asset {name[:100]!r}")
        filename, media_type = ASSETS[name]
        return Response(_read(filename), media_type=media_type, headers=HEADERS)

    return api
