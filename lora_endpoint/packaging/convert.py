"""Turn pickle adapter weights into safetensors, and merge an adapter into its base (``--merge``).

The only module that imports torch / peft / transformers, and only inside the functions: a plain
build never pays for them.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from lora_endpoint.handler.adapters import PICKLE_WEIGHTS, SAFETENSORS_WEIGHTS
from lora_endpoint.packaging.base import is_pickle
from lora_endpoint.packaging.compat import normalise_folder
from lora_endpoint.packaging.config import PackageError

WEIGHT_SUFFIXES = (".safetensors", ".safetensors.index.json")
# torch's refusal wraps the cause in advice to retry with weights_only=False (which runs the pickle's
# code) or to allowlist globals: keep only the cause.
UNPICKLER_CAUSE = re.compile(r"WeightsUnpickler error:\s*([^\n]+)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def refusal_reason(err: BaseException) -> str:
    """The useful cause of a ``torch.load(weights_only=True)`` failure, one line, without torch's advice."""
    text = ANSI_ESCAPE.sub("", str(err)).strip()
    match = UNPICKLER_CAUSE.search(text)
    if match:  # "Unsupported global: GLOBAL io.open was not an allowed global by default. Please use ..."
        return match.group(1).split(". Please", 1)[0].strip().rstrip(".")
    if not text:
        return f"{type(err).__name__} (truncated or empty file)" if isinstance(err, EOFError) else type(err).__name__
    if "weights_only" in text:
        return "it holds objects other than plain tensors"
    return text.splitlines()[0].split(". ", 1)[0].strip().rstrip(".")


def convert_pickle_adapter(name: str, source: Path, dest: Path) -> Path:
    """Copy adapter ``source`` to ``dest`` with ``adapter_model.bin`` rewritten as safetensors.

    The pickle is opened with ``torch.load(weights_only=True)``, which refuses anything but tensors
    and plain containers, so converting never runs code carried by the file.
    """
    import torch
    from safetensors.torch import save_file

    try:
        state = torch.load(source / PICKLE_WEIGHTS, map_location="cpu", weights_only=True)
    except Exception as err:  # an UnpicklingError names the refused global
        reason = refusal_reason(err)
        raise PackageError(f"adapter {name!r}: {PICKLE_WEIGHTS} cannot be loaded as plain tensors: {reason}") from None
    if not isinstance(state, dict) or not state or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise PackageError(f"adapter {name!r}: {PICKLE_WEIGHTS} must hold a non-empty mapping of name -> tensor")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_file() and not entry.name.startswith(".") and not is_pickle(entry.name):
            shutil.copyfile(entry, dest / entry.name)
    # safetensors refuses shared or strided storage: give each tensor its own contiguous copy.
    tensors = {key: value.detach().contiguous().clone() for key, value in state.items()}
    save_file(tensors, str(dest / SAFETENSORS_WEIGHTS), metadata={"format": "pt"})
    return dest


def merge_adapter(base_dir: Path, adapter_dir: Path, dest: Path) -> Path:
    """Write ``base + adapter`` merged (peft ``merge_and_unload``) as a full model in ``dest``.

    Weights keep the base's dtype; tokenizer and other non-weight files come from the base, overridden
    by the adapter's own tokenizer files when it ships them. The configs are normalised so that
    transformers 4.x reads them as 5.x does (``lora_endpoint.packaging.compat``).
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    try:
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype="auto")
    except TypeError:  # transformers < 4.56 spells it torch_dtype
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), torch_dtype="auto")
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    dest.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(dest), safe_serialization=True)
    written = {entry.name for entry in dest.iterdir()}
    for folder in (adapter_dir, base_dir):
        for entry in sorted(folder.iterdir()):
            keep = entry.is_file() and not entry.name.startswith(".") and not is_pickle(entry.name)
            weights = entry.name.startswith("adapter_") or entry.name.endswith(WEIGHT_SUFFIXES)
            if keep and not weights and entry.name not in written:
                shutil.copyfile(entry, dest / entry.name)
                written.add(entry.name)
    normalise_folder(dest, owner="merged model")
    return dest
