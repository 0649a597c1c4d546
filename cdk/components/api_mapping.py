"""What the API says on the wire: request schemas, mapping templates and the error-status table.

Error mapping (SageMaker runtime -> caller), applied by integration responses selected on the runtime's
HTTP status:

| runtime answer                               | caller gets                                        |
| -------------------------------------------- | -------------------------------------------------- |
| 200                                          | 200, container body unchanged                      |
| 424 ``ModelError`` (container said non-2xx)  | the container's status (400/404/406/413/415/422/   |
|                                              | 429/500/503; 507 CUDA OOM -> 503; other -> 500)    |
|                                              | and its JSON error body (``OriginalMessage``)      |
| 400 throttling (empty or "Throttl" message)  | 429 ``throttled``                                  |
| 400 "no capacity" (an inference component at | 503 ``no_capacity`` (scaling up from zero: retry)  |
|   zero copies; message mentions "capacity")  |                                                    |
| 400 other ``ValidationError``                | 400 ``invalid_request``                            |
| 429 ``ModelNotReadyException``               | 429 ``model_not_ready``                            |
| 503 ``ServiceUnavailable``                   | 503 ``service_unavailable``                        |
| 401/403 (integration role), other 5xx        | 502 ``bad_gateway``                                |

API Gateway's own errors (schema validation, auth, throttling, timeouts) get the same JSON error shape
through gateway responses. A container body that is not JSON is never echoed: callers get a generic one.
"""

from __future__ import annotations

import json
from typing import Any

from lora_endpoint.contract.api import PASSTHROUGH_CONTAINER_STATUSES, request_schemas

ERROR_BODY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["code", "type", "message"],
    "properties": {
        "code": {"type": "integer"},
        "type": {"type": "string"},
        "message": {"type": "string"},
        "error": {"type": "object"},
    },
}

# The request models come from the handler's contract, the one source of every request shape: the
# gateway validates what the handler would refuse anyway, and never refuses what the handler accepts.
# The AWS integration cannot stream, so these refuse ``stream: true``. ``Invocation`` (the raw
# container route) dispatches by shape and is checked by the handler alone.
REQUEST_SCHEMAS: dict[str, dict[str, Any]] = {
    **{k: v for k, v in request_schemas(streaming=False).items() if k in ("Generate", "Rag", "ChatCompletion")},
    "Invocation": {"type": "object"},
}

RUNTIME_ERROR_MAP: dict[str, tuple[str, str]] = {
    # selection pattern on the runtime's status -> (method response status, VTL template key)
    "424": ("500", "model_error"),
    "400": ("400", "runtime_400"),
    "429": ("429", "model_not_ready"),
    "503": ("503", "service_unavailable"),
    "40[13]|5(0[0-24-9]|[1-9][0-9])": ("502", "bad_gateway"),
}

METHOD_RESPONSE_STATUSES = ("200", "400", "404", "406", "413", "415", "422", "429", "500", "502", "503", "504")


def error_json(status: int | str, error_type: str, message: str) -> str:
    """The project's error body; ``message`` is literal text (no VTL)."""
    body = {"code": int(status), "type": error_type, "message": message,
            "error": {"type": error_type, "message": message}}
    return json.dumps(body)


_MODEL_ERROR = (
    "#set($original = \"$input.path('$.OriginalStatusCode')\")\n"
    "#set($message = \"$!input.path('$.OriginalMessage')\")\n"
    "#set($status = 500)\n"
    f"#foreach($code in [{', '.join(str(c) for c in PASSTHROUGH_CONTAINER_STATUSES)}])"
    "#if(\"$code\" == $original)#set($status = $code)#end#end\n"
    "#if($original == \"507\")#set($status = 503)#end\n"
    "#set($context.responseOverride.status = $status)\n"
    # A JSON body in the project's shape passes as it is; DJL async mode's {"code", "error": "type: text"}
    # is rewritten into that shape (lora_endpoint.contract.errors.full_error_body does the same for the local routes).
    "#if($message.trim().startsWith(\"{\"))#set($body = $util.parseJson($message))"
    "#if(\"$!body.type\" != \"\")$message#else"
    "#set($text = \"$!body.error\")#set($cut = $text.indexOf(\": \"))"
    "#if($cut > 0 && $text.substring(0, $cut).matches(\"[a-z][a-z_]*\"))"
    "#set($kind = $text.substring(0, $cut))#set($from = $cut + 2)#set($text = $text.substring($from))"
    "#else#set($kind = \"model_error\")#end"
    "#set($text = $util.escapeJavaScript($text).replaceAll(\"\\\\'\", \"'\"))"
    '{"code": $status, "type": "$kind", "message": "$text", "error": {"type": "$kind", "message": "$text"}}'
    "#end#else"
    '{"code": $status, "type": "model_error", "message": "the model server failed to answer", '
    '"error": {"type": "model_error", "message": "the model server failed to answer"}}#end'
)

_RUNTIME_400 = (
    "#set($message = \"$!input.path('$.message')$!input.path('$.Message')\")\n"
    "#if($message == \"\" || $message.contains(\"hrottl\"))\n"
    "#set($context.responseOverride.status = 429)\n"
    + error_json(429, "throttled", "the endpoint is at capacity; retry with backoff")
    # An inference component with no copy (scaled to zero) is refused with a "no capacity" ValidationError
    # until a copy is up; that is a temporary outage, not a bad request.
    + "\n#elseif($message.contains(\"apacity\"))\n"
    "#set($context.responseOverride.status = 503)\n"
    + error_json(503, "no_capacity", "the model is scaling up from zero; retry in a few minutes")
    + "\n#else\n"
    + error_json(400, "invalid_request", "the model runtime rejected the request (size or format)")
    + "\n#end"
)

RESPONSE_TEMPLATES: dict[str, str] = {
    "model_error": _MODEL_ERROR,
    "runtime_400": _RUNTIME_400,
    "model_not_ready": error_json(429, "model_not_ready", "the model is not ready yet; retry with backoff"),
    "service_unavailable": error_json(503, "service_unavailable", "the model runtime is unavailable; retry"),
    "bad_gateway": error_json(502, "bad_gateway", "the gateway could not reach the model"),
}

HEALTH_TEMPLATE = (
    "#set($status = \"$!input.path('$.EndpointStatus')\")\n"
    "#set($instances = \"$!input.path('$.ProductionVariants[0].CurrentInstanceCount')\")\n"
    "#if($instances == \"\")#set($instances = 0)#end\n"
    "#if($status != \"InService\")#set($context.responseOverride.status = 503)#end\n"
    '{"status": "$status", "healthy": #if($status == "InService")true#{else}false#end, '
    "\"endpoint\": \"$!input.path('$.EndpointName')\", "
    '"instances": $instances}'
)
HEALTH_UNKNOWN = '{"status": "Unknown", "healthy": false}'

DESCRIBE_ENDPOINT_TEMPLATE = '{"EndpointName": "%s"}'
INFO_REQUEST_TEMPLATE = '{"task": "info"}'

# API Gateway's own errors: response type -> (status, machine type).
GATEWAY_ERRORS: dict[str, tuple[str, str]] = {
    "BAD_REQUEST_BODY": ("400", "invalid_request"),
    "BAD_REQUEST_PARAMETERS": ("400", "invalid_request"),
    "UNSUPPORTED_MEDIA_TYPE": ("415", "unsupported_media_type"),
    "REQUEST_TOO_LARGE": ("413", "payload_too_large"),
    "ACCESS_DENIED": ("403", "access_denied"),
    "MISSING_AUTHENTICATION_TOKEN": ("403", "missing_authentication"),
    "INVALID_SIGNATURE": ("403", "invalid_signature"),
    "EXPIRED_TOKEN": ("403", "expired_token"),
    "INVALID_API_KEY": ("403", "invalid_api_key"),
    "THROTTLED": ("429", "throttled"),
    "QUOTA_EXCEEDED": ("429", "quota_exceeded"),
    "INTEGRATION_TIMEOUT": ("504", "timeout"),
    "DEFAULT_5XX": ("502", "gateway_error"),
}


def gateway_error_template(status: str, error_type: str) -> str:
    """Gateway-response body in the project's error shape; schema errors carry the validator's text."""
    message = (
        "\"$util.escapeJavaScript($context.error.validationErrorString).replaceAll(\"\\\\'\", \"'\")\""
        if error_type == "invalid_request"
        else "$context.error.messageString"
    )
    return (
        f'{{"code": {status}, "type": "{error_type}", "message": {message}, '
        f'"error": {{"type": "{error_type}", "message": {message}}}}}'
    )
