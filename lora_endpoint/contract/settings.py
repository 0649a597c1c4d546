"""Handler settings: one frozen dataclass parsed once from the environment (and DJL options).

Every setting has an environment variable (``LORA_*``) and a DJL option of the same name in lower case
without the prefix (``option.max_new_tokens`` in ``serving.properties`` sets ``LORA_MAX_NEW_TOKENS``).
DJL options win over the environment, because they are what the package author wrote down.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_PREFIX = "LORA_"

# Env-var names, in one place: cdk/ and lora_endpoint/packaging/ import these instead of spelling them again.
ENV_BASE_MODEL = "LORA_BASE_MODEL"
ENV_BASE_MODEL_CACHE = "LORA_BASE_MODEL_CACHE"
ENV_ADAPTERS_DIR = "LORA_ADAPTERS_DIR"
ENV_DEFAULT_ADAPTER = "LORA_DEFAULT_ADAPTER"
ENV_DTYPE = "LORA_DTYPE"
ENV_DEVICE = "LORA_DEVICE"
ENV_MERGE = "LORA_MERGE"
ENV_CPU_PREPACK = "LORA_CPU_PREPACK"
ENV_MAX_NEW_TOKENS = "LORA_MAX_NEW_TOKENS"
ENV_DEFAULT_MAX_NEW_TOKENS = "LORA_DEFAULT_MAX_NEW_TOKENS"
ENV_MAX_INPUT_TOKENS = "LORA_MAX_INPUT_TOKENS"
ENV_MAX_INPUTS = "LORA_MAX_INPUTS"
ENV_MAX_RETURN_SEQUENCES = "LORA_MAX_RETURN_SEQUENCES"
ENV_MAX_PAYLOAD_BYTES = "LORA_MAX_PAYLOAD_BYTES"
ENV_MAX_BATCH_ROWS = "LORA_MAX_BATCH_ROWS"
ENV_KV_CACHE_TOKENS = "LORA_KV_CACHE_TOKENS"
ENV_PREFILL_CHUNK_TOKENS = "LORA_PREFILL_CHUNK_TOKENS"
ENV_MAX_QUEUE = "LORA_MAX_QUEUE"
ENV_TIME_BUDGET_S = "LORA_TIME_BUDGET_S"
ENV_ENGINE = "LORA_ENGINE"
ENV_TENSOR_PARALLEL_DEGREE = "LORA_TENSOR_PARALLEL_DEGREE"
ENV_MAX_LORAS = "LORA_MAX_LORAS"
ENV_MAX_CPU_LORAS = "LORA_MAX_CPU_LORAS"
ENV_MAX_LORA_RANK = "LORA_MAX_LORA_RANK"
ENV_ADAPTER_JIT_PREFIX = "LORA_ADAPTER_JIT_PREFIX"
ENV_ADAPTER_CACHE_DIR = "LORA_ADAPTER_CACHE_DIR"
ENV_ADAPTER_MAX_BYTES = "LORA_ADAPTER_MAX_BYTES"
ENV_ALLOW_BASE_MISMATCH = "LORA_ALLOW_BASE_MISMATCH"
ENV_RAG_TEMPLATE = "LORA_RAG_TEMPLATE"
ENV_TRUST_REMOTE_CODE = "LORA_TRUST_REMOTE_CODE"
ENV_LOG_LEVEL = "LORA_LOG_LEVEL"
ENV_LOG_FORMAT = "LORA_LOG_FORMAT"
ENV_LOG_PROMPTS = "LORA_LOG_PROMPTS"
ENV_REQUEST_LOG = "LORA_REQUEST_LOG"
ENV_METRICS = "LORA_METRICS"
ENV_METRICS_NAMESPACE = "LORA_METRICS_NAMESPACE"
ENV_METRICS_ENDPOINT = "LORA_METRICS_ENDPOINT"
ENV_METRICS_ADAPTERS = "LORA_METRICS_ADAPTERS"
ENV_METRICS_TOP_ADAPTERS = "LORA_METRICS_TOP_ADAPTERS"
ENV_METRICS_INTERVAL_S = "LORA_METRICS_INTERVAL_S"
ENV_TELEMETRY_DESTINATION = "LORA_TELEMETRY_DESTINATION"

DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("auto", "transformers", "vllm")
LOG_FORMATS = ("json", "text")
METRICS_MODES = ("emf", "off")

DEFAULT_RAG_TEMPLATE = (
    "Answer the question using only the context below.\n\n"
    "Context:\n{context}\n\n"
    "Question: {query}\n"
    "Answer:"
)


class SettingsError(ValueError):
    """A setting has a value the handler cannot run with; the message names the variable."""


def _as_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _as_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be {low}..{high}, got {value}")
    return value


def _as_float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be {low}..{high}, got {value}")
    return value


@dataclass(frozen=True)
class HandlerSettings:
    """Everything the handler reads from its environment, validated once at start-up."""

    base_model: str = ""
    """Base model: empty (found in the model dir), a path (absolute or relative to the model dir),
    an ``s3://`` prefix (downloaded at start) or a hub id (fetched by transformers)."""
    base_model_cache: str = "/tmp/lora-endpoint/base-model"
    adapters_dir: str = "adapters"
    default_adapter: str = ""
    """Adapter used when a request names none; empty means the base model."""
    dtype: str = "auto"
    device: str = "auto"
    merge: bool = False
    """Merge the adapter into the base weights (only when exactly one adapter is served)."""
    cpu_prepack: bool = True
    """On a CPU, keep float32 linear weights also in oneDNN's packed layout (faster decoding, twice the
    linear weights' memory); see lora_endpoint/handler/prepack.py."""
    max_new_tokens: int = 1024
    """Server-side cap on ``max_new_tokens``."""
    default_max_new_tokens: int = 30
    """Used when a request sets no ``max_new_tokens`` (30 is LMI's default)."""
    max_input_tokens: int = 0
    """Prompt + new tokens must fit; 0 means the model's own context length."""
    max_inputs: int = 32
    """Most prompts in one request's ``inputs`` list."""
    max_return_sequences: int = 4
    max_payload_bytes: int = 6 * 1024 * 1024
    max_batch_rows: int = 32
    """Most rows the engine runs at once (its KV-cache slots); more requests wait in its queue."""
    kv_cache_tokens: int = 0
    """KV-cache positions the engine may hold over all rows; 0 = what fits in 80% of the free GPU memory
    (30% of the available RAM on a CPU), at most ``max_batch_rows`` full contexts."""
    prefill_chunk_tokens: int = 512
    """Prompt tokens prefilled per engine iteration: longer prompts are prefilled in chunks, so running
    streams wait at most one chunk's worth between two tokens."""
    max_queue: int = 256
    """Requests that may wait for the engine; beyond them a 429 ``model_overloaded``."""
    time_budget_s: float = 50.0
    """Generation stops with ``finish_reason`` ``time_limit`` past this many seconds (0 turns it off)."""
    engine: str = "auto"
    """What generates: ``transformers`` (this handler's engine), ``vllm`` (vLLM's, where it is installed), or
    ``auto``: vLLM when it is installed and a GPU is present, else transformers."""
    tensor_parallel_degree: int = 1
    """GPUs one model copy is split over (LMI's ``option.tensor_parallel_degree``): vLLM's tensor
    parallelism; the transformers engine spreads layers over the GPUs instead (not tensor parallel)."""
    max_loras: int = 8
    """Adapters resident on the device (in the model's LoRA layers) at once; least recently used ones
    that no running request needs are evicted to make room (LMI's ``option.max_loras``)."""
    max_cpu_loras: int = 0
    """Adapters whose weights are kept in host memory, ready to move to the device; 0 = ``max_loras``.
    Past it the least recently used are dropped and read again from their files on next use."""
    max_lora_rank: int = 64
    """Largest rank an adapter may have (packaged or registered at run time)."""
    adapter_jit_prefix: str = ""
    """Just-in-time adapters: an ``s3://`` prefix (or a local folder) holding ``NAME/`` folders; a request
    naming an adapter that is not registered loads ``<prefix>/NAME/`` on first use. Empty turns it off."""
    adapter_cache_dir: str = "/tmp/lora-endpoint/adapters"
    """Where adapters fetched from S3 (registered with an ``s3://`` src, or just in time) are downloaded."""
    adapter_max_bytes: int = 4 << 30
    """Largest adapter download (all its files) accepted from S3."""
    allow_base_mismatch: bool = False
    """Serve adapters whose ``base_model_name_or_path`` names another model than the base."""
    rag_template: str = DEFAULT_RAG_TEMPLATE
    trust_remote_code: bool = False
    log_level: str = "INFO"
    log_format: str = "json"
    """The handler's log lines: ``json`` (one JSON object per line, what CloudWatch Logs Insights queries) or
    ``text``."""
    log_prompts: bool = False
    """Put each request's prompt (as the model saw it) in its request record. Off: prompts never reach logs."""
    request_log: bool = True
    """One JSON record per request (id, adapter, tokens, timings, status, error type)."""
    metrics: str = "emf"
    """``emf``: the request records and a periodic engine record carry CloudWatch Embedded Metric Format
    metadata, so CloudWatch Logs turns them into metrics (no API calls, no permissions); ``off``."""
    metrics_namespace: str = "LoraEndpoint"
    metrics_endpoint: str = ""
    """The ``Endpoint`` dimension's value (the CDK stack sets the endpoint's name); empty = ``local``."""
    metrics_adapters: str = ""
    """Comma-separated adapters that get their own ``Adapter`` dimension; empty = the busiest ones."""
    metrics_top_adapters: int = 10
    """With no ``metrics_adapters``: how many of the busiest adapters keep their name (the rest: ``other``)."""
    metrics_interval_s: float = 60.0
    """How often the engine record (queue, batch, KV cache, adapters, throughput) is written; 0 = never."""
    telemetry_destination: str = "auto"
    """Where request and engine records go: ``stdout``, ``stderr``, a file path, or ``auto``: the
    container's own stdout (``/proc/1/fd/1``) when the handler runs inside a model server that prefixes
    its workers' output (DJL Serving, the SageMaker toolkit), so every record stays one JSON log event;
    else stdout."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise SettingsError(f"{ENV_DTYPE} must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.engine not in ENGINES:
            raise SettingsError(f"{ENV_ENGINE} must be one of {', '.join(ENGINES)}, got {self.engine!r}")
        if self.device not in DEVICES:
            raise SettingsError(f"{ENV_DEVICE} must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.default_max_new_tokens > self.max_new_tokens:
            raise SettingsError(
                f"{ENV_DEFAULT_MAX_NEW_TOKENS} ({self.default_max_new_tokens}) must not exceed "
                f"{ENV_MAX_NEW_TOKENS} ({self.max_new_tokens})"
            )
        if self.log_format not in LOG_FORMATS:
            raise SettingsError(f"{ENV_LOG_FORMAT} must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.metrics not in METRICS_MODES:
            raise SettingsError(f"{ENV_METRICS} must be one of {', '.join(METRICS_MODES)}, got {self.metrics!r}")
        if not self.metrics_namespace or len(self.metrics_namespace) > 255 or self.metrics_namespace.startswith("AWS/"):
            raise SettingsError(f"{ENV_METRICS_NAMESPACE} must be 1..255 characters and not start with AWS/, got "
                                f"{self.metrics_namespace!r}")
        if len(self.metrics_endpoint) > 1024:
            raise SettingsError(f"{ENV_METRICS_ENDPOINT} must be at most 1024 characters")
        prefix = self.adapter_jit_prefix
        if prefix and not (prefix.startswith("s3://") and prefix[5:].strip("/")) and not os.path.isabs(prefix):
            raise SettingsError(
                f"{ENV_ADAPTER_JIT_PREFIX} must be an s3:// prefix or an absolute folder, got {prefix!r}")
        for field in ("{context}", "{query}"):
            if field not in self.rag_template:
                raise SettingsError(f"{ENV_RAG_TEMPLATE} must contain {field}")

    @property
    def metrics_adapter_names(self) -> tuple[str, ...]:
        """``metrics_adapters`` as names."""
        return tuple(n.strip() for n in self.metrics_adapters.split(",") if n.strip())

    @property
    def host_loras(self) -> int:
        """Adapters kept in host memory (``max_cpu_loras``, at least ``max_loras``)."""
        return max(self.max_cpu_loras, self.max_loras)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HandlerSettings:
        """Read ``LORA_*`` variables from ``env`` (``os.environ`` when omitted)."""
        env = os.environ if env is None else env
        return cls._parse({k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)})

    @classmethod
    def from_options(cls, options: Mapping[str, str], env: Mapping[str, str] | None = None) -> HandlerSettings:
        """Read DJL ``option.*`` properties (prefix already stripped) over the environment."""
        env = os.environ if env is None else env
        merged = {k[len(ENV_PREFIX) :].lower(): v for k, v in env.items() if k.startswith(ENV_PREFIX)}
        names = {f.name for f in dataclasses.fields(cls)}
        merged.update({k.lower(): str(v) for k, v in options.items() if k.lower() in names})
        return cls._parse(merged)

    @classmethod
    def _parse(cls, raw: Mapping[str, str]) -> HandlerSettings:
        values: dict[str, object] = {}
        for field in dataclasses.fields(cls):
            if field.name not in raw:
                continue
            name = ENV_PREFIX + field.name.upper()
            text = raw[field.name]
            if field.type == "bool":
                values[field.name] = _as_bool(name, text)
            elif field.type == "int":
                values[field.name] = _as_int(name, text, 0, 1 << 40)
            elif field.type == "float":
                values[field.name] = _as_float(name, text, 0.0, 3600.0)
            else:
                values[field.name] = text.strip() if field.name != "rag_template" else text
        settings = cls(**values)  # type: ignore[arg-type]
        for name in ("max_new_tokens", "default_max_new_tokens", "max_inputs", "max_return_sequences",
                     "max_payload_bytes", "max_batch_rows", "prefill_chunk_tokens", "max_queue", "max_loras",
                     "max_lora_rank", "adapter_max_bytes", "tensor_parallel_degree"):
            if getattr(settings, name) < 1:
                raise SettingsError(f"{ENV_PREFIX}{name.upper()} must be at least 1")
        return settings


def serving_options(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``option.*`` lines of a ``serving.properties`` file, prefix stripped ({} when absent).

    DJL hands these to ``handle()`` on its init call; the SageMaker toolkit does not, so ``model_fn``
    reads them itself and both runtimes see the same settings.
    """
    options: dict[str, str] = {}
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - tiny file, read once at start-up
    except FileNotFoundError:
        return options
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("option.") and "=" in line:
            key, _, value = line[len("option.") :].partition("=")
            options[key.strip()] = value.strip()
    return options


def env_var(field_name: str) -> str:
    """The environment variable that sets ``HandlerSettings.<field_name>``."""
    if field_name not in {f.name for f in dataclasses.fields(HandlerSettings)}:
        raise KeyError(field_name)
    return ENV_PREFIX + field_name.upper()
