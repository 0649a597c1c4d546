"""Loading: find the base model, load it with its adapters, pick device and dtype.

Imports torch / transformers / peft lazily so that importing ``handler`` stays cheap.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_endpoint.contract.errors import ModelLoadError
from lora_endpoint.contract.settings import HandlerSettings

from .adapters import AdapterError, AdapterInfo, check_unmerged, discover_adapters
from .attach import attach_adapters, short_reason
from .telemetry import Telemetry
from .threads import on_own_thread

log = logging.getLogger("lora_endpoint.handler")

BASE_SUBDIR = "base"
BASE_ADAPTER_NAME = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class LoadedModel:
    """The model as served: base (+ adapters), tokenizer(s), and what info requests report."""

    model: Any
    tokenizer: Any
    settings: HandlerSettings
    adapters: dict[str, AdapterInfo]
    base_name: str
    device: Any
    dtype: Any
    context_length: int
    merged_adapter: str | None = None
    adapter_tokenizers: dict[str, Any] = field(default_factory=dict)
    # Adapters found under adapters/ that are not served: name -> short reason (no local paths).
    failed_adapters: dict[str, str] = field(default_factory=dict)
    load_seconds: float = 0.0
    # One generation at a time per model outside the engine (the reference decode loop, tests).
    lock: threading.Lock = field(default_factory=threading.Lock)
    engine: Any = None
    """The ``engine.Engine`` that owns this model once started (``engine.engine_for``)."""
    resident: tuple[str, ...] = ()
    """The adapters rows may be routed to now: loaded in the model's LoRA layers, sorted. ``adapters``
    are all the registered ones; the registry moves them in and out of ``resident``."""
    registry: Any = None
    """The ``registry.AdapterRegistry`` (None when an adapter is merged: nothing can be registered)."""
    engine_kind: str = "transformers"
    """``transformers`` (``engine.Engine``) or ``vllm`` (``vllm_engine.VllmEngine``; ``model`` then has no
    weights: vLLM holds them)."""
    engine_reason: str = ""
    base_path: str = ""
    """Where the base model was loaded from (vLLM loads it again from there)."""
    telemetry: Telemetry = field(default=None)  # type: ignore[assignment]
    """Request and engine records (``telemetry``), made from ``settings``; no sink until one is added."""

    def __post_init__(self) -> None:
        if self.telemetry is None:
            self.telemetry = Telemetry(self.settings)

    @property
    def uses_peft(self) -> bool:
        return self.merged_adapter is None and hasattr(self.model, "peft_config")

    def tokenizer_for(self, adapter: str | None) -> Any:
        """An adapter's own tokenizer (chat template) wins over the base model's."""
        return self.adapter_tokenizers.get(adapter or "", self.tokenizer)


def resolve_base_model(model_dir: str | Path, settings: HandlerSettings) -> str:
    """Where the base model is: a local folder, or a hub id that transformers will fetch."""
    root = Path(model_dir)
    ref = settings.base_model
    if ref.startswith("s3://"):
        from .s3 import download_prefix

        dest = Path(settings.base_model_cache)
        download_prefix(ref, dest, error=ModelLoadError, what="base model object")
        return str(dest)
    if ref:
        candidate = Path(ref) if os.path.isabs(ref) else root / ref
        if candidate.is_dir():
            return str(candidate)
        if os.path.isabs(ref) or ref.startswith("."):
            raise ModelLoadError(f"base model folder {candidate} does not exist")
        return ref  # a hub id: fetched by transformers (needs network in the container)
    for candidate in (root / BASE_SUBDIR, root):
        if (candidate / "config.json").is_file():
            return str(candidate)
    raise ModelLoadError(
        f"no base model in {root}: expected {root / BASE_SUBDIR}/config.json or {root}/config.json, "
        "or set LORA_BASE_MODEL / option.base_model"
    )


def pick_device_and_dtype(settings: HandlerSettings) -> tuple[Any, Any]:
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("LORA_DEVICE is cuda but no CUDA device is visible")
    if settings.dtype != "auto":
        dtype = getattr(torch, settings.dtype)
    elif device == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float32
    return torch.device(device), dtype


def dtype_kwarg(dtype: Any) -> dict[str, Any]:
    """transformers >= 4.56 spells it ``dtype``; older releases only know ``torch_dtype``."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def _context_length(config: Any, tokenizer: Any) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", 0)
    return limit if isinstance(limit, int) and 0 < limit < 10**7 else 2048


def load_model(model_dir: str | Path, settings: HandlerSettings) -> LoadedModel:
    """Load the base model and every adapter under ``<model_dir>/<adapters_dir>`` once, by name.

    An adapter that cannot be served (a broken folder, weights that do not fit the base, peft raising)
    is logged, left out and listed in ``failed_adapters``; the base and the other adapters are served.
    Loading fails only when the base cannot load, or when the adapter it cannot do without (the
    ``LORA_DEFAULT_ADAPTER``, the one ``LORA_MERGE`` bakes in) is one of those.

    The work runs on a thread of its own that ends with it. Torch's CPU kernels run on an OpenMP
    thread pool that lives as long as the thread that first used it; loading on the caller's thread
    (the server's event loop, which lives on) would leave a second pool beside the engine thread's, and
    two live pools on the same cores make each other's parallel regions wait (measured on 2 cores: the
    engine's decode step 9.1 vs 5.6 ms on the 21M benchmark model).
    """
    return on_own_thread(lambda: _load_model(model_dir, settings), name="lora-load")


def _load_model(model_dir: str | Path, settings: HandlerSettings) -> LoadedModel:
    import time

    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    base_ref = resolve_base_model(model_dir, settings)
    problems: dict[str, Exception] = {}
    adapters = discover_adapters(Path(model_dir) / settings.adapters_dir, failures=problems)
    if settings.merge and len(adapters) + len(problems) != 1:
        raise ModelLoadError(f"LORA_MERGE needs exactly one adapter, found {len(adapters) + len(problems)}")
    if not settings.merge:
        for name in list(adapters):
            try:
                check_unmerged(adapters[name])
            except AdapterError as err:
                problems[name] = err
                del adapters[name]
    _require_adapters(settings, adapters, problems, model_dir)
    device, dtype = pick_device_and_dtype(settings)
    log.info("loading base model %s on %s as %s with adapters %s", base_ref, device, dtype, sorted(adapters))

    tokenizer = _load_tokenizer(base_ref, settings.trust_remote_code)
    from .engine_choice import engine_choice

    engine_kind, engine_reason = engine_choice(settings.engine, device.type == "cuda")
    if settings.merge and engine_kind == "vllm":
        raise ModelLoadError("LORA_MERGE is served by the transformers engine only: set LORA_ENGINE=transformers")
    log.info("engine: %s (%s)", engine_kind, engine_reason)
    load_kwargs: dict[str, Any] = {"trust_remote_code": settings.trust_remote_code, **dtype_kwarg(dtype)}
    if engine_kind == "vllm":
        model: Any = _meta_model(base_ref, load_kwargs)  # vLLM loads the weights; the checks need the shapes
    else:
        if device.type == "cuda":
            load_kwargs["device_map"] = "auto"  # spreads a model too big for one GPU over all of them
        model = AutoModelForCausalLM.from_pretrained(base_ref, **load_kwargs)
        if device.type != "cuda":
            model.to(device)

    context = _context_length(model.config, tokenizer)
    if settings.max_input_tokens:
        context = min(context, settings.max_input_tokens)
    lm = LoadedModel(
        model=model,
        tokenizer=tokenizer,
        settings=settings,
        adapters={},
        base_name=_base_name(base_ref, settings),
        device=model.get_input_embeddings().weight.device if engine_kind != "vllm" else device,
        dtype=dtype,
        context_length=context,
        engine_kind=engine_kind,
        engine_reason=engine_reason,
        base_path=base_ref,
    )
    if settings.merge:
        model, adapters, lm.adapter_tokenizers = attach_adapters(model, adapters, problems,
                                                                 load_tokenizer=_load_tokenizer)
        _require_adapters(settings, adapters, problems, model_dir)
        lm.model, lm.adapters, lm.merged_adapter = model.merge_and_unload(), adapters, next(iter(adapters))
    else:
        _serve_packaged(lm, adapters, problems, Path(base_ref) if Path(base_ref).is_dir() else None)
        _require_adapters(settings, lm.adapters, problems, model_dir)
    lm.failed_adapters = {name: short_reason(err, model_dir) for name, err in sorted(problems.items())}
    for name, problem in sorted(problems.items()):
        log.error("adapter %r is not served: %s", name, problem)
    lm.model.eval()
    if settings.cpu_prepack and device.type == "cpu" and engine_kind != "vllm":
        from .prepack import prepack

        packed = prepack(lm.model)
        if packed:
            log.info("%d linear layers packed for oneDNN (LORA_CPU_PREPACK)", packed)
    lm.load_seconds = time.perf_counter() - started
    return lm


def _serve_packaged(lm: LoadedModel, adapters: dict[str, AdapterInfo], problems: dict[str, Exception],
                    base_path: Path | None) -> None:
    """Register the package's adapters (each checked against the loaded base) and move the first
    ``max_loras`` of them onto the device; one that fails goes to ``problems``, the others are served."""
    from .registry import AdapterRegistry

    registry = AdapterRegistry(lm, lm.model, base_path, load_tokenizer=_load_tokenizer)
    lm.registry = registry
    for name in sorted(adapters):
        try:
            registry.add_packaged(adapters[name])
        except Exception as err:  # one adapter's failure must not take the base and the others down
            problems[name] = err
    for name in registry.preload_order():
        try:
            registry.acquire([name]).release()
        except Exception as err:
            problems[name] = err
            registry.forget(name)


def _meta_model(ref: str, load_kwargs: dict[str, Any]) -> Any:
    """The base's modules without weights (shapes only, no memory): what the adapter checks read when
    vLLM owns the real model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ref, trust_remote_code=load_kwargs.get("trust_remote_code", False))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=load_kwargs.get("trust_remote_code", False))
    try:
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(ref)  # its EOS ids end rows
    except OSError:
        pass
    return model


def _load_tokenizer(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ref, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        # Padding positions are masked out; any id will do, and EOS always exists.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _require_adapters(
    settings: HandlerSettings, adapters: dict[str, AdapterInfo], problems: dict[str, Exception], model_dir: str | Path
) -> None:
    """Fail the load when the adapter the settings depend on is not served (serving the base instead
    would answer every request that names no adapter with another model than the one configured)."""
    needed = [(settings.default_adapter, "LORA_DEFAULT_ADAPTER")] if settings.default_adapter else []
    if settings.merge:
        needed += [(name, "LORA_MERGE's adapter") for name in problems]
    for name, setting in needed:
        if name in problems:
            raise ModelLoadError(f"{setting} {name!r} cannot be served: {short_reason(problems[name], model_dir)}")
        if name not in adapters:
            raise ModelLoadError(f"{setting} is {name!r} but the adapters are: {sorted(adapters) or 'none'}")


def _base_name(base_ref: str, settings: HandlerSettings) -> str:
    """A readable base model name: the hub id as configured, else the last part of the S3 prefix or the
    folder name (callers see this name in model info and chat answers: no bucket, no local path)."""
    ref = settings.base_model
    if ref.startswith("s3://"):
        return ref.rstrip("/").rsplit("/", 1)[-1] or "base"
    if ref and not os.path.isabs(ref) and not ref.startswith("."):
        return ref
    path = Path(base_ref)
    return path.parent.name if path.name == BASE_SUBDIR and path.parent.name else path.name
