"""Per-request records and the periodic engine record: what operators see of the endpoint's work.

Every request the handler answers ends in one record (``Trace.done``): id, kind, adapters, tokens,
timings, status and error type - never the prompt unless ``LORA_LOG_PROMPTS`` asks for it. Every
``LORA_METRICS_INTERVAL_S`` an engine record carries the gauges (queue depth, running rows, batch and
KV-cache use, adapters) and the counters' change since the last one. The metrics are ``metrics.CATALOG``.

Records reach the sinks: the writer (``RecordWriter``: one JSON line each, with CloudWatch Embedded
Metric Format metadata when ``LORA_METRICS=emf``, so CloudWatch Logs extracts the metrics with no API
call and no permission) and any added with ``Telemetry.add_sink`` (the local endpoint's Prometheus
collector). A sink that fails is logged and dropped: telemetry never fails a request.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import IO, Any

from lora_endpoint.contract import metrics
from lora_endpoint.contract.errors import HandlerError
from lora_endpoint.contract.settings import ENV_TELEMETRY_DESTINATION, HandlerSettings, SettingsError

log = logging.getLogger("lora_endpoint.handler")

Record = dict[str, Any]
Sink = Callable[[Record], None]

REQUEST_EVENT = "request"
ENGINE_EVENT = "engine"
LOCAL_ENDPOINT = "local"
PROMPT_CHARS = 16_384  # of a logged prompt (LORA_LOG_PROMPTS)


class Trace:
    """One request on its way through the handler; the service and streaming modules fill it in."""

    __slots__ = (
        "_done",
        "adapters",
        "handle",
        "kind",
        "prompt",
        "prompt_tokens",
        "request_id",
        "rows",
        "started",
        "stream",
    )

    def __init__(self, request_id: str = "", *, started: float | None = None) -> None:
        self.request_id = request_id
        self.started = time.monotonic() if started is None else started
        self.kind = ""
        self.stream = False
        self.adapters: tuple[str | None, ...] | None = None  # None until the rows are known
        self.prompt_tokens = 0
        self.rows = 0
        self.handle: Any = None  # the engine's Handle: first/last token times, tokens, finish reasons
        self.prompt: str | None = None
        self._done = False

    def request(self, request: Any) -> None:
        """The parsed request: its kind and whether it streams."""
        self.kind = str(getattr(request, "kind", "") or "")
        self.stream = bool(getattr(request, "stream", False))

    def prepared(self, lm: Any, prepared: Any) -> None:
        """The request's rows (tokens, adapters); the prompt text only when prompts may be logged."""
        rows = prepared.rows
        self.rows = len(rows)
        self.adapters = tuple(r.adapter for r in rows)
        self.prompt_tokens = sum(len(r.prompt_ids) for r in rows)
        if rows and lm.settings.log_prompts:
            try:
                text = lm.tokenizer_for(rows[0].adapter).decode(rows[0].prompt_ids)
                # A CloudWatch log event holds 256 KB (and an EMF record past it loses its metrics).
                self.prompt = text if len(text) <= PROMPT_CHARS else text[:PROMPT_CHARS] + " [truncated]"
            except Exception:  # a tokenizer that cannot decode must not fail the request
                self.prompt = None


def request_id(properties: Callable[[str], Any]) -> str:
    """The request's id from DJL's properties: ``requestId`` (DJL takes it from SageMaker's
    ``X-Amzn-SageMaker-Inference-Id``), else that header or ``X-Request-Id`` itself."""
    for key in ("requestId", "X-Amzn-SageMaker-Inference-Id", "x-amzn-sagemaker-inference-id", "X-Request-Id",
                "x-request-id"):
        value = properties(key)
        if value:
            return str(value)[:256]
    return ""


class Telemetry:
    """The records' source: request records as requests end, the engine record on a timer."""

    def __init__(self, settings: HandlerSettings) -> None:
        self.settings = settings
        self.endpoint = settings.metrics_endpoint or LOCAL_ENDPOINT
        self.labels = metrics.AdapterLabels(fixed=settings.metrics_adapter_names, top=settings.metrics_top_adapters)
        self._sinks: list[Sink] = []
        self._lock = threading.Lock()
        self._lm_ref: weakref.ref[Any] | None = None
        self._last: dict[str, float] = {}
        self._last_at = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- sinks ------------------------------------------------------------------------------------
    def add_sink(self, sink: Sink) -> None:
        """Hand every record to ``sink`` too (once, however often it is added)."""
        with self._lock:
            if all(s is not sink for s in self._sinks):
                self._sinks = [*self._sinks, sink]

    def remove_sink(self, sink: Sink) -> None:
        with self._lock:
            self._sinks = [s for s in self._sinks if s is not sink]

    def _emit(self, record: Record) -> None:
        for sink in self._sinks:  # a copy-on-write list: no lock on the request path
            try:
                sink(record)
            except Exception:
                log.exception("a telemetry sink failed; it is dropped")
                self.remove_sink(sink)

    # --- request records --------------------------------------------------------------------------
    def done(self, trace: Trace, status: int, error_type: str | None = None) -> None:
        """The request ended with ``status`` (``error_type``: the error body's type); once per trace."""
        if trace._done:
            return
        trace._done = True
        if not self._sinks:
            return
        self._emit(self.request_record(trace, status, error_type))

    def answered(self, trace: Trace | None, answer: Any) -> None:
        """``done`` from what the request got: a ``HandlerError`` (its status and type) or an answer (200)."""
        if trace is None:
            return
        if isinstance(answer, HandlerError):
            self.done(trace, answer.status, answer.code)
        else:
            self.done(trace, 200)

    def request_record(self, trace: Trace, status: int, error_type: str | None) -> Record:
        now = time.monotonic()
        handle = trace.handle
        record: Record = {
            "event": REQUEST_EVENT, "request_id": trace.request_id, "kind": trace.kind, "stream": trace.stream,
            "status": status, "error_type": error_type, "rows": trace.rows,
            "adapters": sorted({a for a in trace.adapters or () if a is not None}),
            metrics.DIM_ENDPOINT: self.endpoint,
            # An adapter a request named but that is not served is never a label: labels stay bounded.
            metrics.DIM_ADAPTER: metrics.NONE_LABEL if trace.adapters is None else self.labels.label(trace.adapters),
            "Requests": 1, "PromptTokens": trace.prompt_tokens, "EndToEndLatency": _ms(now - trace.started),
        }
        if error_type is not None:
            record[metrics.DIM_ERROR_TYPE] = error_type
            record["Errors"] = 1
        if handle is not None:
            record["GeneratedTokens"] = handle.tokens
            finishes = {f for f in handle.finishes if f is not None}
            if handle.cancelled and None in handle.finishes:
                finishes = {"cancelled"}  # the client went away (or the stream was closed) before the end
            record["finish_reason"] = finishes.pop() if len(finishes) == 1 else ("mixed" if finishes else None)
            if handle.admitted_s is not None:
                record["QueueTime"] = _ms(handle.admitted_s - trace.started)
            if handle.first_token_s is not None:
                record["TimeToFirstToken"] = _ms(handle.first_token_s - trace.started)
                if handle.tokens > 1 and handle.last_token_s is not None:
                    gaps = (handle.last_token_s - handle.first_token_s) / (handle.tokens - 1)
                    record["InterTokenLatency"] = _ms(gaps)
        if trace.prompt is not None:
            record["prompt"] = trace.prompt
        return record

    # --- the engine record ------------------------------------------------------------------------
    def watch(self, lm: Any) -> None:
        """Report on ``lm``'s engine and adapters every ``metrics_interval_s`` (from a daemon thread, which
        ends with ``stop`` or once ``lm`` is gone: it holds the model only weakly)."""
        self._lm_ref = weakref.ref(lm)
        self._last, self._last_at = self._counters(lm), time.monotonic()
        interval = self.settings.metrics_interval_s
        if interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._every, args=(interval,), name="lora-telemetry", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def _lm(self) -> Any:
        return self._lm_ref() if self._lm_ref is not None else None

    def _every(self, interval: float) -> None:
        while not self._stop.wait(interval):
            if self._lm is None:
                return
            try:
                self.tick()
            except Exception:  # a failing report must not end the reports
                log.exception("the engine record failed")

    def tick(self) -> Record | None:
        """Write the engine record now (the timer calls this); the adapter labels start a new interval."""
        lm = self._lm
        if lm is None:
            return None
        now = time.monotonic()
        counters = self._counters(lm)
        elapsed = max(now - self._last_at, 1e-9)
        tokens = counters["tokens"] - self._last.get("tokens", 0)
        record: Record = {"event": ENGINE_EVENT, metrics.DIM_ENDPOINT: self.endpoint,
                          "interval_s": round(elapsed, 3), **self.gauges(lm),
                          "AdapterLoads": counters["loads"] - self._last.get("loads", 0),
                          "AdapterEvictions": counters["evictions"] - self._last.get("evictions", 0),
                          "GenerationThroughput": round(tokens / elapsed, 3)}
        self._last, self._last_at = counters, now
        self.labels.roll()
        self._emit(record)
        return record

    def gauges(self, lm: Any) -> dict[str, float]:
        """The engine's gauges now (also what a Prometheus scrape reads)."""
        engine, registry, settings = lm.engine, lm.registry, lm.settings
        stats = engine.stats if engine is not None else None
        running = stats.running_rows if stats is not None else 0
        kv_budget = getattr(getattr(engine, "limits", None), "kv_tokens", 0) or 0
        kv_used = stats.kv_tokens_allocated if stats is not None else 0
        return {
            "QueueDepth": stats.waiting if stats is not None else 0,
            "RunningRows": running,
            "BatchOccupancy": round(100.0 * running / max(settings.max_batch_rows, 1), 2),
            "KvCacheUsage": round(100.0 * kv_used / kv_budget, 2) if kv_budget else 0.0,
            "ResidentAdapters": len(lm.resident),
            "RegisteredAdapters": len(registry.names()) if registry is not None else len(lm.adapters),
        }

    @staticmethod
    def _counters(lm: Any) -> dict[str, float]:
        """Cumulative counters: adapter loads and evictions, tokens generated."""
        registry, engine = lm.registry, lm.engine
        stats = getattr(registry, "stats", None)
        return {"loads": getattr(stats, "device_loads", 0), "evictions": getattr(stats, "evictions", 0),
                "tokens": engine.stats.generated_tokens if engine is not None else 0}

    def counters(self) -> dict[str, float]:
        """Cumulative adapter loads / evictions and tokens since start (for Prometheus counters)."""
        lm = self._lm
        return self._counters(lm) if lm is not None else {"loads": 0, "evictions": 0, "tokens": 0}


def _ms(seconds: float) -> float:
    return round(max(seconds, 0.0) * 1000, 3)


# --- the writer: JSON lines, with EMF metadata ---------------------------------------------------------

def emf(record: Record, namespace: str, *, timestamp_ms: int | None = None) -> Record:
    """``record`` with CloudWatch Embedded Metric Format metadata for the catalog metrics it holds.

    Request records get the dimension sets [Endpoint] and [Endpoint, Adapter], their errors
    [Endpoint, ErrorType]; engine records [Endpoint]. Metrics a record lacks (no first token after an
    error) are not declared, so CloudWatch never sees an empty value.
    """
    directives: list[Record] = []

    def directive(kind: str, dimensions: list[list[str]]) -> None:
        declared = [{"Name": m.name, "Unit": m.unit} for m in metrics.of_kind(kind)
                    if isinstance(record.get(m.name), int | float) and not isinstance(record.get(m.name), bool)]
        if declared:
            directives.append({"Namespace": namespace, "Dimensions": dimensions, "Metrics": declared})

    endpoint, adapter, error = metrics.DIM_ENDPOINT, metrics.DIM_ADAPTER, metrics.DIM_ERROR_TYPE
    if record.get("event") == REQUEST_EVENT:
        directive(metrics.REQUEST, [[endpoint], [endpoint, adapter]])
        if error in record:
            directive(metrics.ERROR, [[endpoint, error]])
    else:
        directive(metrics.ENGINE, [[endpoint]])
    stamp = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    return {"_aws": {"Timestamp": stamp, "CloudWatchMetrics": directives}, **record}


_METRIC_FIELDS = frozenset({"event", metrics.DIM_ENDPOINT, metrics.DIM_ADAPTER, metrics.DIM_ERROR_TYPE,
                            *metrics.BY_NAME})


class RecordWriter:
    """A sink writing each record as one JSON line (with EMF metadata when ``with_emf``)."""

    def __init__(self, stream: IO[str], *, namespace: str, with_emf: bool, requests: bool) -> None:
        self._stream = stream
        self._namespace = namespace
        self._with_emf = with_emf
        self._requests = requests
        self._lock = threading.Lock()

    def __call__(self, record: Record) -> None:
        if record.get("event") == ENGINE_EVENT and not self._with_emf:
            return
        if record.get("event") == REQUEST_EVENT and not self._requests:
            # LORA_REQUEST_LOG=false with metrics on: the figures and their dimensions only, no request details.
            record = {k: v for k, v in record.items() if k in _METRIC_FIELDS}
        line = json.dumps(emf(record, self._namespace) if self._with_emf else record, ensure_ascii=False,
                          separators=(",", ":"), default=str)
        with self._lock:  # one line at a time: lines from many threads never interleave
            self._stream.write(line + "\n")
            self._stream.flush()


CONTAINER_STDOUT = "/proc/1/fd/1"


def in_sagemaker() -> bool:
    """Inside a SageMaker hosting container (which always has ``/opt/ml``)."""
    return os.path.isdir("/opt/ml")


_opened: dict[str, IO[str]] = {}


def open_destination(destination: str, *, under_model_server: bool) -> IO[str]:
    """The stream records go to (see ``HandlerSettings.telemetry_destination``); a file is opened once."""
    key = f"{destination}|{under_model_server}"
    if key not in _opened:
        _opened[key] = _open(destination, under_model_server=under_model_server)
    return _opened[key]


def log_stream(settings: HandlerSettings, *, under_model_server: bool) -> IO[str] | None:
    """Where the handler's log lines go: the container's stdout when records go there too (so each line
    is its own CloudWatch event, not one prefixed by the model server); None = stderr, as before."""
    if settings.telemetry_destination != "auto":
        return None
    stream = open_destination("auto", under_model_server=under_model_server)
    return stream if getattr(stream, "name", "") == CONTAINER_STDOUT else None


def _open(destination: str, *, under_model_server: bool) -> IO[str]:
    if destination == "stdout":
        return sys.stdout
    if destination == "stderr":
        return sys.stderr
    if destination == "auto":
        # DJL Serving and the SageMaker toolkit log each line of their Python workers' stdout with a prefix
        # ("[INFO ] PyProcess - W-...-stdout: ..."): CloudWatch would not see a JSON object, so not EMF. The
        # container's own stdout (its first process's) reaches CloudWatch Logs line for line.
        if under_model_server and in_sagemaker() and os.getpid() != 1 and os.access(CONTAINER_STDOUT, os.W_OK):
            try:
                return open(CONTAINER_STDOUT, "a", encoding="utf-8", buffering=1)
            except OSError as err:
                log.warning("cannot write to the container's stdout (%s): records go to this process's stdout", err)
        return sys.stdout
    try:
        return open(destination, "a", encoding="utf-8", buffering=1)
    except OSError as err:
        raise SettingsError(f"{ENV_TELEMETRY_DESTINATION}: cannot write to {destination!r} "
                            f"({err.strerror or err}); use stdout, stderr, auto or a writable file") from None


def writer_for(settings: HandlerSettings, *, under_model_server: bool) -> RecordWriter | None:
    """The settings' writer, or None when neither request records nor metrics are on."""
    with_emf = settings.metrics == "emf"
    if not (with_emf or settings.request_log):
        return None
    stream = open_destination(settings.telemetry_destination, under_model_server=under_model_server)
    return RecordWriter(stream, namespace=settings.metrics_namespace, with_emf=with_emf,
                        requests=settings.request_log)
