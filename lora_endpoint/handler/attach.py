"""Attaching adapters to a loaded base model with peft, each one in isolation.

An adapter that fails here (weights that do not fit the base, a tokenizer that does not load, peft
raising) is recorded and the model is left as it was before it, so the base and the other adapters
are still served. Imports peft lazily.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adapter_weights import check_adapter_weights, module_weight_shapes
from .adapters import AdapterError, AdapterInfo

log = logging.getLogger("lora_endpoint.handler")

# Longest reason kept in ``failed_adapters`` (callers see it in model info and 404s).
MAX_REASON_CHARS = 300


def attach_adapters(
    model: Any, adapters: dict[str, AdapterInfo], problems: dict[str, Exception], *,
    load_tokenizer: Callable[[str], Any],
) -> tuple[Any, dict[str, AdapterInfo], dict[str, Any]]:
    """Check each adapter's weights against the loaded base, then load it with peft, one at a time.

    Returns the (peft-wrapped) model, the adapters served and their own tokenizers; each adapter that
    fails goes to ``problems`` and leaves the model as it was.
    """
    shapes = module_weight_shapes(model) if adapters else {}
    served: dict[str, AdapterInfo] = {}
    tokenizers: dict[str, Any] = {}
    for name in sorted(adapters):
        info = adapters[name]
        try:
            check_adapter_weights(info, shapes)
            own_tokenizer = _own_tokenizer(info, load_tokenizer)
            model = _load_peft(model, info)
        except Exception as err:  # one adapter's failure must not take the base and the others down
            problems[name] = err
            continue
        served[name] = info
        if own_tokenizer is not None:
            tokenizers[name] = own_tokenizer
    return model, served, tokenizers


def _own_tokenizer(info: AdapterInfo, load_tokenizer: Callable[[str], Any]) -> Any:
    """The adapter's own tokenizer (chat template), if it ships one; ``AdapterError`` if it does not load."""
    if not info.has_tokenizer:
        return None
    try:
        return load_tokenizer(str(info.path))
    except Exception as err:
        raise AdapterError(
            f"adapter {info.name!r}: its tokenizer files do not load ({type(err).__name__}: {err})"
        ) from err


def _load_peft(model: Any, info: AdapterInfo) -> Any:
    """Add ``info`` to ``model`` (wrapping it in a ``PeftModel`` the first time); undo it if peft raises."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        try:
            return PeftModel.from_pretrained(model, str(info.path), adapter_name=info.name, is_trainable=False)
        except Exception:
            _strip_peft_layers(model)  # peft may have injected layers into the base before it raised
            raise
    try:
        model.load_adapter(str(info.path), adapter_name=info.name, is_trainable=False)
    except Exception:
        if info.name in model.peft_config:
            try:
                model.delete_adapter(info.name)
            except Exception:  # what is left is inactive: no row is ever routed to it
                log.warning("adapter %r: could not remove its partly loaded layers", info.name, exc_info=True)
        raise
    return model


def _strip_peft_layers(model: Any) -> None:
    """Put the base layers back where peft wrapped them, as ``unload()`` does without a ``PeftModel``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, module in list(model.named_modules()):
        if not name or not type(module).__module__.startswith("peft."):
            continue
        original = module.get_base_layer() if isinstance(module, BaseTunerLayer) else getattr(
            module, "original_module", None)
        if original is not None:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, original)
    if "peft_config" in vars(model):
        del model.peft_config


def short_reason(err: BaseException, model_dir: str | Path) -> str:
    """One line for callers: the error without the adapter prefix and local paths, cut to a bound."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__
    if not isinstance(err, AdapterError):
        text = f"{type(err).__name__}: {text}"
    text = re.sub(r"^adapter '[^']*': ", "", text)
    for root in {str(Path(model_dir).resolve()), str(Path(model_dir).absolute())}:
        text = text.replace(root + os.sep, "")
    text = re.sub(r"(?<![\w.])/[^\s'\",;:()]+", "<path>", text)  # anything else that looks like a path
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 3] + "..."


# --- run-time residency (lora_endpoint/handler/registry.py): one adapter in or out of the loaded model --------------


def host_copy(info: AdapterInfo, dtype: Any) -> tuple[Any, dict[str, Any]]:
    """peft's config and the weights of ``info`` read into host memory, ready for ``attach``.

    LoRA factors become float32, as peft makes them for a half-precision base (its
    ``autocast_adapter_dtype``); full module copies (``modules_to_save``) take the base's ``dtype``.
    """
    import torch
    from peft import PeftConfig
    from peft.utils import load_peft_weights

    config = PeftConfig.from_pretrained(str(info.path))
    config.inference_mode = True
    weights = load_peft_weights(str(info.path), device="cpu")
    for key, tensor in weights.items():
        if tensor.is_floating_point():
            weights[key] = tensor.to(torch.float32 if ".lora_" in key else dtype)
    return config, weights


def attach(model: Any, name: str, config: Any, weights: dict[str, Any]) -> Any:
    """Add adapter ``name`` to ``model`` (wrapped in a ``PeftModel`` the first time) from a host copy.

    peft builds the adapter's layers empty and takes the host tensors as they are (no initialisation, no
    copy on a CPU). Returns the model; raises ``AdapterError`` and leaves the model as it was when the
    weights do not fit it.
    """
    import copy

    from peft import PeftModel

    config = copy.deepcopy(config)  # peft writes into the config it is given
    if not isinstance(model, PeftModel):
        wrapped = PeftModel(model, config, adapter_name=name, low_cpu_mem_usage=True)
        try:
            _load_state(wrapped, name, weights)
        except Exception:
            _strip_peft_layers(model)
            raise
        wrapped.eval()
        return wrapped
    model.add_adapter(name, config, low_cpu_mem_usage=True)
    try:
        _load_state(model, name, weights)
    except Exception:
        detach(model, name)
        raise
    return model


def _load_state(model: Any, name: str, weights: dict[str, Any]) -> None:
    from peft import set_peft_model_state_dict

    device = model.get_input_embeddings().weight.device
    if device.type != "cpu":
        weights = {key: tensor.to(device) for key, tensor in weights.items()}
    result = set_peft_model_state_dict(model, weights, adapter_name=name, low_cpu_mem_usage=True)
    missing = [key for key in getattr(result, "missing_keys", ()) if f".{name}" in key and "lora_" in key]
    empty = [key for key, param in model.named_parameters() if f".{name}." in key and param.is_meta]
    if missing or empty:
        raise AdapterError(
            f"adapter {name!r}: the weights file has no values for {len(missing or empty)} of its LoRA tensors "
            f"(first: {(missing or empty)[0]})"
        )


def detach(model: Any, name: str) -> None:
    """Remove adapter ``name``'s layers from ``model``. peft cannot delete the last adapter of a
    ``PeftModel`` (its active adapter would be gone): that one stays loaded, unrouted, until another
    adapter is attached (callers route no row to it and run base rows with peft's adapters disabled)."""
    configs = getattr(model, "peft_config", {})
    if name in configs and len(configs) > 1:
        model.delete_adapter(name)


def leftovers(model: Any, keep: set[str]) -> list[str]:
    """Adapters still loaded in ``model`` beyond ``keep`` (the one ``detach`` could not remove)."""
    return [name for name in getattr(model, "peft_config", {}) if name not in keep]


def attaches_in_place(model: Any, config: Any, weights: dict[str, Any]) -> bool:
    """True when adding this adapter only fills LoRA layers ``model`` already has (no module of the model
    is replaced and nothing but LoRA factors is loaded), so it may run beside forward passes that route
    their rows with ``lora_batch`` (which reads only the factors it copied)."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear

    if not isinstance(model, PeftModel) or getattr(config, "modules_to_save", None):
        return False
    if any(getattr(config, key, None) for key in ("use_dora", "lora_bias", "trainable_token_indices")):
        return False
    inner = model.get_base_model()
    for key in weights:
        module, sep, _ = key.removeprefix("base_model.model.").partition(".lora_")
        if not sep:
            return False
        try:
            layer = inner.get_submodule(module)
        except AttributeError:
            return False
        if type(layer) is not LoraLinear:
            return False
    return True


# Per-adapter entries of a peft LoRA Linear layer the fast path fills (dicts and ModuleDicts keyed by
# adapter name); a layer with any other keyed entry goes through peft's own add_adapter.
_KEYED = frozenset({"r", "lora_alpha", "scaling", "use_dora", "use_rslora", "lora_bias", "lora_A", "lora_B",
                    "lora_dropout"})


class FastAttach:
    """An adapter's LoRA modules, built off the model, ready to be put into the layers in one short step.

    peft's ``add_adapter`` walks every module of the model several times (tens of milliseconds on a small model,
    mostly Python). When every target of the adapter is a LoRA Linear layer the model has already, this
    does what peft's ``update_layer`` leaves behind - the factors as ``nn.Linear`` modules, ``r``,
    ``lora_alpha``, ``scaling`` (``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA), no dropout (inference),
    no DoRA, no bias - as a handful of dict writes per layer, so that the engine pauses for far less than
    a decode step. Tests check that it serves the same tokens as peft's own path in every supported peft.
    """

    def __init__(self, model: Any, name: str, config: Any, info: AdapterInfo, weights: dict[str, Any]) -> None:
        import math

        from torch import nn

        self.model, self.name, self.config = model, name, config
        inner = model.get_base_model()
        parts: dict[str, dict[str, Any]] = {}
        for key, tensor in weights.items():
            module, _, rest = key.removeprefix("base_model.model.").partition(".lora_")
            parts.setdefault(module, {})[rest.split(".", 1)[0]] = tensor
        self.layers: list[tuple[Any, dict[str, Any]]] = []
        for module, factors in parts.items():
            layer = inner.get_submodule(module)
            a, b = factors["A"], factors["B"]
            rank = int(a.shape[0])
            alpha = _alpha_for(info, module)
            device = layer.base_layer.weight.device
            entries = {
                "r": rank,
                "lora_alpha": alpha,
                "scaling": alpha / math.sqrt(rank) if getattr(config, "use_rslora", False) else alpha / rank,
                "use_dora": False,
                "use_rslora": bool(getattr(config, "use_rslora", False)),
                "lora_bias": False,
                "lora_A": _frozen_linear(a.to(device)),
                "lora_B": _frozen_linear(b.to(device)),
                "lora_dropout": nn.Identity(),
            }
            self.layers.append((layer, entries))

    @staticmethod
    def applies(model: Any, config: Any, weights: dict[str, Any]) -> bool:
        """The fast path serves this adapter: ``attaches_in_place``, only ``lora_A`` / ``lora_B`` weights, and
        each target layer holds nothing keyed by adapter beyond what the fast path fills."""
        if not attaches_in_place(model, config, weights) or not getattr(model, "peft_config", None):
            return False
        if any(not key.endswith((".lora_A.weight", ".lora_B.weight")) for key in weights):
            return False
        inner = model.get_base_model()
        for key in weights:
            layer = inner.get_submodule(key.removeprefix("base_model.model.").partition(".lora_")[0])
            some = next(iter(layer.lora_A.keys()), None)  # an adapter peft put there: what it keys by name
            if some is None:
                return False
            held = {k for k, v in vars(layer).items() if isinstance(v, dict) and some in v}
            held |= {k for k, v in layer._modules.items() if hasattr(v, "keys") and some in v}
            if not held <= _KEYED:
                return False
        return True

    def insert(self) -> None:
        """Put the modules into the layers (between engine steps: no forward pass may run meanwhile)."""
        for layer, entries in self.layers:
            for key, value in entries.items():
                target = getattr(layer, key, None)
                if target is not None:
                    target[self.name] = value
        self.model.peft_config[self.name] = self.config


def _frozen_linear(weight: Any) -> Any:
    """An ``nn.Linear`` (no bias) around ``weight`` without initialising a weight first."""
    from torch import nn

    linear = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(linear)
    linear.in_features, linear.out_features = int(weight.shape[1]), int(weight.shape[0])
    linear.weight = nn.Parameter(weight, requires_grad=False)
    linear.register_parameter("bias", None)
    linear.eval()
    return linear


def _alpha_for(info: AdapterInfo, module: str) -> float:
    """The ``lora_alpha`` peft gives ``module``: the first ``alpha_pattern`` key matching its path's end."""
    for key, alpha in info.alpha_pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):  # peft's get_pattern_key
            return float(alpha)
    return float(info.alpha)
