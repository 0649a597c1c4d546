"""Errors a caller can cause, each carrying its HTTP status and a machine-readable type.

One table: the status lives on the class, so every boundary (DJL ``handle()``, the SageMaker
toolkit functions, the local endpoint) renders the same error the same way.
"""

from __future__ import annotations

from typing import Any


class HandlerError(Exception):
    """Base class: ``status`` is the HTTP status, ``code`` the machine-readable error type."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> dict[str, Any]:
        """The JSON error body every boundary sends: ``{"error": {...}, "code", "message"}``.

        ``code``/``message`` at the top level mirror DJL's ``Output.error`` body, so a caller sees
        one shape whichever path produced the error; ``error`` follows the OpenAI error object.
        """
        error: dict[str, Any] = {"type": self.code, "message": self.message}
        if self.param:
            error["param"] = self.param
        return {"code": self.status, "type": self.code, "message": self.message, "error": error}


class InvalidRequest(HandlerError):
    status = 400
    code = "invalid_request"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class UnknownAdapter(HandlerError):
    status = 404
    code = "unknown_adapter"


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


class ModelLoadError(Exception):
    """The model dir, base model or an adapter cannot be served; raised at start-up only."""


def internal_error_body() -> dict[str, Any]:
    """Body for an unexpected failure: generic on purpose, the details go to the log."""
    return {
        "code": 500,
        "type": "internal_error",
        "message": "internal error",
        "error": {"type": "internal_error", "message": "internal error; see the endpoint logs"},
    }
