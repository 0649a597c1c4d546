"""What an adapter must agree on with the base it is served on: rank cap, target modules, vocabulary, name.

``lora_endpoint.packaging build`` runs these against the base's files before packaging, and the handler against
the loaded model when an adapter is registered at run time, so an adapter the packager would refuse is
refused by a running endpoint too, with the same message. Standard library only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from .adapters import ADAPTER_CONFIG, AdapterError, AdapterInfo

# Modules whose weight has one row per vocabulary entry.
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


def check_rank(info: AdapterInfo, max_rank: int, *, flag: str = "LORA_MAX_LORA_RANK") -> None:
    """The adapter's largest rank (``r`` or ``rank_pattern``) must not exceed ``max_rank``."""
    if info.max_rank > max_rank:
        field = "r" if info.max_rank == info.rank else "rank_pattern"
        raise AdapterError(
            f"adapter {info.name!r}: field '{field}' gives rank {info.max_rank}, above {flag} {max_rank}"
        )


def last_part(reference: str) -> str:
    """``org/name`` or ``/models/name/`` -> ``name``, lower case: how bases are compared by name."""
    return reference.rstrip("/").rsplit("/", 1)[-1].lower()


def check_base_name(info: AdapterInfo, names: Collection[str], *, base_path: Path | None = None,
                    served: str = "", hint: str = "") -> None:
    """The adapter's ``base_model_name_or_path`` must name the base (by last part, or the same folder).

    ``names`` are the lower-case names the base goes by; ``served`` says which base that is and ``hint``
    how to override the check, in the message.
    """
    declared = info.base_model_name_or_path
    if not declared:
        return
    if base_path is not None and Path(declared).expanduser().resolve() == base_path.resolve():
        return
    if last_part(declared) not in names:
        served = served or f"the base model served here ({', '.join(sorted(names)) or 'unknown'})"
        raise AdapterError(
            f"adapter {info.name!r}: field 'base_model_name_or_path' is {declared!r}, which contradicts "
            f"{served}{hint}"
        )


def check_target_modules(info: AdapterInfo, modules: Collection[str]) -> None:
    """Every ``target_modules`` entry must match a module of the base, as peft matches them.

    ``modules`` are the base's module paths (``model.layers.0.self_attn.q_proj``). A string target is a
    regex peft matches against the whole path (``all-linear`` always matches).
    """
    raw = _raw_targets(info)
    if isinstance(raw, str):
        if raw == "all-linear":
            return
        try:
            pattern = re.compile(raw)
        except re.error as err:
            raise AdapterError(f"adapter {info.name!r}: field 'target_modules' is not a valid regex: {err}") from None
        if not any(pattern.fullmatch(module) for module in modules):
            raise AdapterError(f"adapter {info.name!r}: field 'target_modules' ({raw!r}) matches no base module")
        return
    missing = [
        key for key in info.target_modules
        if not any(module == key or module.endswith("." + key) for module in modules)
    ]
    if missing:
        raise AdapterError(
            f"adapter {info.name!r}: field 'target_modules' names modules the base model does not have: "
            f"{', '.join(missing)}"
        )


def _raw_targets(info: AdapterInfo) -> object:
    try:
        return json.loads((info.path / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("target_modules")
    except (OSError, ValueError, AttributeError):  # read_adapter has vouched for it already
        return list(info.target_modules)


def _tokenizer_size(path: Path) -> int | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = list(data["model"]["vocab"].values()) + [token["id"] for token in data.get("added_tokens", [])]
        return max(ids) + 1 if ids else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def check_vocab(info: AdapterInfo, shapes: Mapping[str, Sequence[int]], vocab: int | None) -> None:
    """Embedding-sized tensors (and the adapter's own tokenizer) must fit the base's vocabulary.

    ``shapes`` are the adapter's tensor shapes (from its safetensors header); ``vocab`` the base's
    ``vocab_size`` (None: not known, nothing to check).
    """
    if vocab is None:
        return
    for tensor, shape in sorted(shapes.items()):
        module = tensor.split(".lora_", 1)[0] if ".lora_" in tensor else tensor.rsplit(".", 1)[0]
        if not any(module.endswith(key) or f".{key}." in module for key in EMBEDDING_MODULES) or len(shape) != 2:
            continue
        if "lora_embedding_A" in tensor:
            rows = shape[1]
        elif "lora_A" in tensor or "lora_embedding_B" in tensor:
            continue
        else:  # lm_head lora_B, or a full copy from modules_to_save
            rows = shape[0]
        if rows != vocab:
            raise AdapterError(
                f"adapter {info.name!r}: tensor {tensor} has {rows} vocabulary rows but the base model's "
                f"vocab_size is {vocab} (resize the base embeddings or retrain the adapter)"
            )
    tokens = _tokenizer_size(info.path / "tokenizer.json") if info.has_tokenizer else None
    if tokens is not None and tokens > vocab:
        raise AdapterError(
            f"adapter {info.name!r}: its tokenizer has {tokens} tokens but the base model's vocab_size is {vocab}"
        )
