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

log = logging.getLogger(__name__)

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
