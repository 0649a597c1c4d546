"""Entry points: SageMaker's model_fn / input_fn / predict_fn / output_fn and DJL Serving's handle().

DJL matches the four SageMaker functions by their exact parameter names, so keep them as they are.
``handle`` is the one error boundary of the DJL path: typed errors become their status with a JSON
body; anything unexpected is logged with the request id and answered as a generic 500.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from . import __version__, service, streaming
from .body import decode_json
from .config import HandlerSettings, serving_options
from .errors import HandlerError, UnknownAdapter, internal_error_body, shown
from .kinds import parse_body, with_adapter_header
from .loading import LoadedModel, load_model
from .media import JSON, check_accept

log = logging.getLogger("lora_endpoint.handler")

ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
DEFAULT_MODEL_DIR = "/opt/ml/model"


class _Runtime:
    """What survives between DJL calls: settings (sent only on the init call) and the loaded model."""

    def __init__(self) -> None:
        self.settings: HandlerSettings | None = None
        self.model: LoadedModel | None = None
        self.lock = threading.Lock()

    def current_settings(self) -> HandlerSettings:
        if self.settings is None:
            self.settings = HandlerSettings.from_env()
        return self.settings


_runtime = _Runtime()


# --- SageMaker inference toolkit functions (exact parameter names: DJL matches them) --------------


def model_fn(model_dir: str) -> LoadedModel:
    """Load the base model and every adapter found in ``model_dir``."""
    if _runtime.settings is None:  # not started by DJL: read the package's serving.properties ourselves
        _runtime.settings = HandlerSettings.from_options(serving_options(os.path.join(model_dir, "serving.properties")))
    settings = _runtime.settings
    logging.basicConfig(level=settings.log_level)
    model = load_model(model_dir, settings)
    _runtime.model = model
    _log_loaded(model)
    return model


def _log_loaded(model: LoadedModel) -> None:
    """What model info no longer shows callers (versions, device, memory) goes to the operator's log."""
    import peft
    import torch
    import transformers

    log.info(
        "serving %s (%s on %s, context %d) with adapters %s in %.1f s; handler %s, torch %s, transformers %s, "
        "peft %s", model.base_name, str(model.dtype).removeprefix("torch."), model.device, model.context_length,
        sorted(model.adapters) or "none", model.load_seconds, __version__, torch.__version__,
        transformers.__version__, peft.__version__,
    )


def input_fn(request_body: bytes | str, content_type: str | None) -> Any:
    """Parse and validate a request body into a typed request."""
    settings = _runtime.current_settings()
    return parse_body(decode_json(request_body, content_type, settings), settings)


def predict_fn(input_data: Any, model: LoadedModel) -> Any:
    """Generate for one parsed request; returns the JSON-ready response (or a stream of bytes)."""
    if getattr(input_data, "stream", False):
        return b"".join(streaming.stream(model, input_data))
    answer = service.run(model, [input_data])[0]
    if isinstance(answer, HandlerError):
        raise answer
    return answer


def output_fn(prediction: Any, accept: str | None) -> bytes:
    """Serialise a prediction as JSON (streams were already rendered as JSON lines / SSE)."""
    if isinstance(prediction, bytes | bytearray):
        return bytes(prediction)
    check_accept(accept, stream_type=None)
    return json.dumps(prediction, ensure_ascii=False).encode("utf-8")


# --- DJL Serving ----------------------------------------------------------------------------------


def _load_from_djl(properties: dict[str, Any]) -> None:
    options = {k: v for k, v in properties.items() if isinstance(v, str)}
    settings = HandlerSettings.from_options(options)
    _runtime.settings = settings
    model_dir = properties.get("model_dir") or os.environ.get("SM_MODEL_DIR") or DEFAULT_MODEL_DIR
    model_fn(str(model_dir))


def _ensure_loaded(inputs: Any) -> bool:
    """Load on the init call (empty body); True if this call was the init call."""
    with _runtime.lock:
        if _runtime.model is None:
            _load_from_djl(dict(inputs.get_properties()))
    return bool(inputs.is_empty())


def _parse_item(item: Any) -> Any:
    request = input_fn(item.get_as_bytes() or b"", item.get_property("Content-Type"))
    stream = getattr(request, "stream", False)
    check_accept(item.get_property("Accept"), stream_type=streaming.stream_type(request) if stream else None)
    return with_adapter_header(request, item.get_property(ADAPTER_HEADER))


def _error_output(output_cls: Any, status: int, body: dict[str, Any]) -> Any:
    out = output_cls()
    out.set_code(status)
    out.add_property("Content-Type", JSON)
    out.add_as_json(body)
    return out


def handle(inputs: Any) -> Any:
    """DJL Serving entry: the init call loads the model; request calls run parse -> generate -> render."""
    from djl_python import Output  # ships only in the LMI image: import it here, never at module level

    if _ensure_loaded(inputs):
        return None
    model = _runtime.model
    assert model is not None
    request_id = inputs.get_property("requestId") or "-"
    batched = inputs.is_batch()
    try:
        items = inputs.get_batches() if batched else [inputs]
        parsed: list[Any] = []
        for item in items:
            try:
                parsed.append(_parse_item(item))
            except HandlerError as err:
                parsed.append(err)
        if not batched and not isinstance(parsed[0], HandlerError) and parsed[0].stream:
            return _stream_output(Output, model, parsed[0])
        answers = _answer_all(model, parsed)
        return _batch_output(Output, answers, parsed) if batched else _single_output(Output, answers[0], parsed[0])
    except HandlerError as err:
        return _error_output(Output, err.status, err.body())
    except Exception:
        log.exception("request %s failed", request_id)  # details in the log, never on the wire
        return _error_output(Output, 500, internal_error_body())


def _answer_all(model: LoadedModel, parsed: list[Any]) -> list[Any]:
    """Answers in order: errors stay errors, streams in a batch are rendered whole."""
    plain = [(i, p) for i, p in enumerate(parsed) if not isinstance(p, HandlerError) and not p.stream]
    answers: list[Any] = list(parsed)
    for (index, _), answer in zip(plain, service.run(model, [p for _, p in plain]), strict=True):
        answers[index] = answer
    for index, request in enumerate(parsed):
        if not isinstance(request, HandlerError) and request.stream:
            try:
                answers[index] = b"".join(streaming.stream(model, request))
            except HandlerError as err:
                answers[index] = err
    return answers


def _payload(answer: Any) -> bytes:
    body = answer.body() if isinstance(answer, HandlerError) else answer
    return bytes(body) if isinstance(body, bytes | bytearray) else json.dumps(body, ensure_ascii=False).encode()


def _single_output(output_cls: Any, answer: Any, request: Any) -> Any:
    if isinstance(answer, HandlerError):
        return _error_output(output_cls, answer.status, answer.body())
    out = output_cls()
    out.add_property("Content-Type", streaming.stream_type(request) if isinstance(answer, bytes) else JSON)
    out.add(_payload(answer), key="data")
    return out


def _batch_output(output_cls: Any, answers: list[Any], parsed: list[Any]) -> Any:
    """One Output for a DJL batch, exactly one content entry per item (``batch_{i}.data``).

    DJL's frontend gives the whole batch the Output's status - and a status of 300 or more sends the
    first item's body to every caller - so a batch is always 200 and a failed item's body is its own
    error object (``code``, ``type``, ``message``). Headers are shared by the batch too: the
    Content-Type is a stream's type only when every item is such a stream, else JSON.
    """
    out = output_cls()
    types = {streaming.stream_type(p) if isinstance(a, bytes) else JSON for a, p in zip(answers, parsed, strict=True)}
    out.add_property("Content-Type", types.pop() if len(types) == 1 else JSON)
    for index, answer in enumerate(answers):
        out.add(_payload(answer), key="data", batch_index=index)
    return out


def _stream_output(output_cls: Any, model: LoadedModel, request: Any) -> Any:
    chunks = streaming.stream(model, request)  # preparation and prefill errors raise here, before any byte
    out = output_cls()
    out.add_property("Content-Type", streaming.stream_type(request))
    try:
        out.add_stream_content(chunks, output_formatter=_identity)
    except TypeError:  # older djl_python: add_stream_content(stream_content) only
        out.add_stream_content(chunks)
    return out


def _identity(chunk: Any) -> Any:
    return chunk


def register_adapter(inputs: Any) -> Any:
    """LMI calls this for each ``adapters/<name>`` when ``option.enable_lora=true``. Adapters in the
    model dir are loaded by ``model_fn`` already; registering one of them again is a no-op."""
    from djl_python import Output

    name = inputs.get_property("name")
    model = _runtime.model
    out = Output()
    if model is not None and name in model.adapters:
        return out
    if model is not None and name in model.failed_adapters:
        reason = model.failed_adapters[name]
        return _error_output(Output, 404, UnknownAdapter(f"adapter {shown(name)} failed to load: {reason}").body())
    log.warning("register_adapter(%s): only adapters packaged under adapters/ are served", name)
    return _error_output(Output, 404, UnknownAdapter(f"adapter {shown(name)} is not in the package").body())
