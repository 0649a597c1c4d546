"""Errors a caller can cause, each carrying its HTTP status and a machine-readable type.

One table: the status lives on the class, so every boundary (DJL ``handle()``, the SageMaker
toolkit functions, the local endpoint) renders the same error the same way.
"""

from __future__ import annotations

import re
import reprlib
from typing import Any


class HandlerError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` the machine-readable error type."""

    status = 500
    code = "internal_error"
    retry_after: int | None = None
    """Seconds a client should wait before retrying (sent as ``Retry-After``); None for no header."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON error body every boundary sends: ``{"error": {...}, "code", "message"}``.

        ``code``/``message`` at the top level mirror DJL's ``Output.error`` body, so a caller sees
        one shape whichever path produced the error; ``error`` follows the OpenAI error object.
        """
        return error_body(self.status, self.code, self.message, self.param)


_TYPE = re.compile(r"[a-z][a-z_]*")


def full_error_body(body: dict[str, Any], status: int) -> dict[str, Any]:
    """An error body in the project's shape from either shape a container answers: ours, or DJL async
    mode's ``{"code", "error": "<type>: <message>"}`` (see ``djl_async``). The API Gateway template
    ``model_error`` does the same in VTL."""
    if isinstance(body.get("type"), str):
        return body
    text = body.get("error")
    text = text if isinstance(text, str) else "the model server failed to answer"
    kind, sep, message = text.partition(": ")
    if not sep or not _TYPE.fullmatch(kind):
        kind, message = "model_error", text
    return error_body(status, kind, message)


def error_body(status: int, error_type: str, message: str, param: str | None = None) -> dict[str, Any]:
    """The one error shape: ``code``, ``type``, ``message`` and an OpenAI-style ``error`` object."""
    error: dict[str, Any] = {"type": error_type, "message": message}
    if param:
        error["param"] = param
    return {"code": status, "type": error_type, "message": message, "error": error}


class InvalidRequest(HandlerError):
    status = 400
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnknownAdapter(HandlerError):
    status = 404
    code = "unknown_adapter"


class AdapterRejected(HandlerError):
    """An adapter offered for registration cannot be served (bad ``src``, not an adapter, wrong base, ...)."""

    status = 400
    code = "invalid_adapter"


class AdapterConflict(HandlerError):
    """A registration that contradicts what is registered (same name, other ``src``; pins past the slots)."""

    status = 409
    code = "adapter_conflict"


class NotAcceptable(HandlerError):
    status = 406
    code = "not_acceptable"


class PayloadTooLarge(HandlerError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(HandlerError):
    status = 415
    code = "unsupported_media_type"


class ModelNotReady(HandlerError):
    status = 503
    code = "model_not_ready"


class ModelOverloaded(HandlerError):
    """The engine's queue is full (or it is shutting down): retry after ``retry_after`` seconds."""

    status = 429
    code = "model_overloaded"
    retry_after = 1


class ServiceUnavailable(HandlerError):
    """The endpoint is shutting down (or cannot take the request now); retry elsewhere or later."""

    status = 503
    code = "service_unavailable"


class GenerationFailed(HandlerError):
    """Generating one request's rows failed on the server side (details in the log, never on the wire)."""

    status = 500
    code = "internal_error"

    def __init__(self) -> None:
        super().__init__("internal error; see the endpoint logs")


class ModelLoadError(Exception):
    """The model dir, base model or an adapter cannot be served; raised at start-up only."""


# How a caller's value is quoted in an error message: short, so a 2 MB bad value never comes back.
_SHOWN = reprlib.Repr()  # keyword arguments only from Python 3.12
_SHOWN.maxstring = _SHOWN.maxother = 80
_SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxdict = 6
_SHOWN.maxlevel = 2


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, for error messages that quote the caller's input."""
    return _SHOWN.repr(value)


def internal_error_body() -> dict[str, Any]:
    """Body for an unexpected failure: generic on purpose, the details go to the log."""
    return {
        "code": 500,
        "type": "internal_error",
        "message": "internal error",
        "error": {"type": "internal_error", "message": "internal error; see the endpoint logs"},
    }
