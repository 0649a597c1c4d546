"""Which engine generates (``LORA_ENGINE``), decided once at load (standard library only)."""

from __future__ import annotations

import importlib.util


def available() -> bool:
    """vLLM can be imported here."""
    return importlib.util.find_spec("vllm") is not None


def engine_choice(wanted: str, cuda: bool) -> tuple[str, str]:
    """The engine for ``LORA_ENGINE=wanted`` (``auto``, ``transformers``, ``vllm``) and why, for the start-up
    log and model info. ``auto`` is vLLM when it is installed and a GPU is present, else transformers."""
    from lora_endpoint.contract.errors import ModelLoadError

    if wanted == "transformers":
        return "transformers", "LORA_ENGINE=transformers"
    if wanted == "vllm":
        if not available():
            raise ModelLoadError("LORA_ENGINE is vllm but vLLM is not installed here")
        return "vllm", "LORA_ENGINE=vllm"
    if available() and cuda:
        return "vllm", "LORA_ENGINE=auto: vLLM is installed and a GPU is present"
    return "transformers", "LORA_ENGINE=auto: " + ("no GPU" if available() else "vLLM is not installed")
