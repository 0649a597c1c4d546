"""Entry points: SageMaker's model_fn / input_fn / predict_fn / output_fn and DJL Serving's handle().

DJL matches the four SageMaker functions by their exact parameter names, so keep them as they are.
``handle`` is the one error boundary of the DJL path: typed errors become their status with a JSON
body; anything unexpected is logged with the request id and answered as a generic 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from typing import Any

from lora_endpoint.contract.errors import HandlerError
from lora_endpoint.contract.settings import HandlerSettings, serving_options

from . import __version__, adapter_api, djl_async, djl_sync, logs, service, streaming, telemetry
from .body import decode_json
from .kinds import parse_body, with_adapter_header
from .loading import LoadedModel, load_model
from .media import check_accept

log = logging.getLogger("lora_endpoint.handler")

ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
ALIAS_HEADER = "X-Amzn-SageMaker-Adapter-Alias"
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
    logs.configure(settings, telemetry.log_stream(settings, under_model_server=True))
    model = load_model(model_dir, settings)
    if model.engine_kind == "vllm":
        from .engine import engine_for

        engine_for(model)  # vLLM's start-up (a minute or more) belongs to the load, not the first request
    writer = telemetry.writer_for(settings, under_model_server=True)
    if writer is not None:
        model.telemetry.add_sink(writer)
    model.telemetry.watch(model)
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
    trace = telemetry.Trace()  # the toolkit passes no headers: no request id here
    trace.request(input_data)
    if getattr(input_data, "stream", False):
        try:
            return b"".join(streaming.stream(model, input_data, trace))  # the stream's end ends the trace
        except HandlerError as err:
            model.telemetry.answered(trace, err)
            raise
    answer = service.run(model, [input_data], [trace])[0]
    model.telemetry.answered(trace, answer)
    if isinstance(answer, HandlerError):
        raise answer
    return answer


def output_fn(prediction: Any, accept: str | None) -> bytes:
    """Serialise a prediction as JSON (streams were already rendered as JSON lines / SSE)."""
    if isinstance(prediction, bytes | bytearray):
        return bytes(prediction)
    check_accept(accept, stream_type=None)
    return json.dumps(prediction, ensure_ascii=False).encode("utf-8")


def add_telemetry_sink(sink: Any) -> bool:
    """Also hand every request and engine record to ``sink`` (a callable taking the record dict); False
    while no model is loaded. The local endpoint's Prometheus collector is one."""
    if _runtime.model is None:
        return False
    _runtime.model.telemetry.add_sink(sink)
    return True


def telemetry_snapshot() -> dict[str, Any] | None:
    """The engine's gauges and cumulative counters now (``metrics`` names), once a model is loaded."""
    model = _runtime.model
    if model is None:
        return None
    return {"endpoint": model.telemetry.endpoint, "gauges": model.telemetry.gauges(model),
            "counters": model.telemetry.counters()}


def engine_stats() -> dict[str, Any] | None:
    """The engine's counters (iterations, batch sizes, queue, KV use) once it runs; for the local
    endpoint's ``/local/stats`` and benchmarks."""
    import dataclasses

    engine = _runtime.model.engine if _runtime.model is not None else None
    return dataclasses.asdict(engine.stats) if engine is not None else None


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
    # The alias header names the adapter when the identifier does not (SageMaker's container standard).
    return with_adapter_header(request, item.get_property(ADAPTER_HEADER) or item.get_property(ALIAS_HEADER))


def handle_sync(inputs: Any) -> Any:
    """DJL sync mode (``option.handler=handle_sync``): the init call loads the model; request calls
    (one request, or a batch) run parse -> engine -> render (see ``djl_sync``)."""
    from djl_python import Output  # ships only in the LMI image: import it here, never at module level

    if _ensure_loaded(inputs):
        return None
    model = _runtime.model
    assert model is not None
    batched = inputs.is_batch()
    traces: list[telemetry.Trace] = []
    try:
        parsed: list[Any] = []
        for item in inputs.get_batches() if batched else [inputs]:
            traces.append(telemetry.Trace(telemetry.request_id(item.get_property)))
            try:
                parsed.append(_parse_item(item))
                traces[-1].request(parsed[-1])
            except HandlerError as err:
                parsed.append(err)
        return djl_sync.respond(Output, model, parsed, batched=batched, traces=traces)
    except HandlerError as err:
        for trace in traces:
            model.telemetry.answered(trace, err)
        return djl_sync.error_output(Output, err)
    except Exception:
        log.exception("request %s failed", inputs.get_property("requestId") or "-")  # details in the log only
        for trace in traces:
            model.telemetry.done(trace, 500, "internal_error")
        return djl_sync.error_output(Output)


async def handle(inputs: Any) -> Any:
    """DJL async mode (``option.async_mode=true``, what the package sets): each request is its own call
    on DJL's event loop; the answer is an encoded Output, or an async generator of them for a stream
    (see ``djl_async``). The model loads on a worker thread; the engine thread runs the model."""
    from djl_python import Output

    if await asyncio.to_thread(_ensure_loaded, inputs):
        return None
    model = _runtime.model
    assert model is not None
    trace = telemetry.Trace(telemetry.request_id(inputs.get_property))
    try:
        request = _parse_item(inputs)
        trace.request(request)
        if request.stream:
            # Prefill errors raise here, before any byte; once it streams, the stream's end ends the trace.
            chunks = await streaming.astream(model, request, trace)
            return djl_async.stream_outputs(Output, chunks, streaming.stream_type(request))
        answer = await service.arun(model, request, trace)
        model.telemetry.done(trace, 200)
        return djl_async.answer_output(Output, answer)
    except HandlerError as err:
        model.telemetry.answered(trace, err)
        return djl_async.error_output(Output, err)
    except Exception:
        log.exception("request %s failed", trace.request_id or "-")
        model.telemetry.done(trace, 500, "internal_error")
        return djl_async.error_output(Output, None)


# --- adapter management (DJL's PyAdapter calls; see adapter_api) ------------------------------------


async def _adapter_call(call: str, inputs: Any) -> Any:
    from djl_python import Output

    try:
        answer = await asyncio.to_thread(adapter_api.CALLS[call], _runtime.model, inputs)
        return djl_async.answer_output(Output, answer)
    except HandlerError as err:
        return djl_async.error_output(Output, err)
    except Exception:
        log.exception("%s(%s) failed", call, inputs.get_property("name") or "-")
        return djl_async.error_output(Output, None)


def _adapter_call_sync(call: str, inputs: Any) -> Any:
    from djl_python import Output

    try:
        answer = adapter_api.CALLS[call](_runtime.model, inputs)
        out = Output()
        out.add_property("Content-Type", "application/json")
        out.add_as_json(answer)
        return out
    except HandlerError as err:
        return djl_sync.error_output(Output, err)
    except Exception:
        log.exception("%s(%s) failed", call, inputs.get_property("name") or "-")
        return djl_sync.error_output(Output)


async def register_adapter(inputs: Any) -> Any:
    """Serve a new adapter (properties ``name``, ``alias``, ``src``; options ``preload``, ``pin``), validated
    like a packaged one; adapters of the package are registered already (registering them again is a
    no-op). Async mode; ``register_adapter_sync`` is the sync mode's (the package's model.py binds it)."""
    return await _adapter_call("register_adapter", inputs)


async def update_adapter(inputs: Any) -> Any:
    """Change a registered adapter's ``preload`` / ``pin``."""
    return await _adapter_call("update_adapter", inputs)


async def unregister_adapter(inputs: Any) -> Any:
    """Stop serving adapter ``name``: new requests get 404 at once; it is freed when its requests end."""
    return await _adapter_call("unregister_adapter", inputs)


def register_adapter_sync(inputs: Any) -> Any:
    """``register_adapter`` for DJL's sync mode."""
    return _adapter_call_sync("register_adapter", inputs)


def update_adapter_sync(inputs: Any) -> Any:
    """``update_adapter`` for DJL's sync mode."""
    return _adapter_call_sync("update_adapter", inputs)


def unregister_adapter_sync(inputs: Any) -> Any:
    """``unregister_adapter`` for DJL's sync mode."""
    return _adapter_call_sync("unregister_adapter", inputs)
