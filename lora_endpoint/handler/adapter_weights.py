"""Adapter weights: every tensor finite, every LoRA factor the shape its rank and base module imply.

The same checks run in ``lora_endpoint.packaging build`` (base shapes read from the base's safetensors headers)
and when the handler loads an adapter (base shapes read from the loaded model), so weights of the wrong
rank or for another hidden size are refused by name instead of crashing peft's ``load_state_dict`` at
start-up, and NaN weights never reach a request. Imports safetensors / torch lazily.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .adapters import SAFETENSORS_WEIGHTS, AdapterError, AdapterInfo

# Prefix peft puts in front of the base model's module paths in a saved adapter.
PEFT_PREFIX = "base_model.model."
# ``<module>.lora_A.weight``, ``<module>.lora_B.bias``, ``<module>.lora_embedding_A``, DoRA's magnitude ...
LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?P<part>lora_A|lora_B|lora_embedding_A|lora_embedding_B|lora_magnitude_vector)"
    r"(?:\.(?P<param>weight|bias))?$"
)
# Elements read at once when scanning a tensor for NaN / infinity: keeps memory flat for big tensors.
SCAN_CHUNK = 1 << 22

BaseShapes = Mapping[str, Sequence[int]]
"""Module path (``model.layers.0.self_attn.q_proj``) -> its weight's shape as a checkpoint stores it."""


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor data read); ``ValueError`` if unreadable."""
    from safetensors import safe_open

    try:  # "np": reading a header needs neither numpy arrays nor torch
        with safe_open(str(path), framework="np") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}  # noqa: SIM118
    except Exception as err:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path.name}: not a readable safetensors file ({err})") from None


def module_weight_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """``BaseShapes`` of a loaded (not yet peft-wrapped) model, in the orientation a checkpoint uses.

    Linear layers report ``(out_features, in_features)`` from their attributes, not the weight, whose
    shape a quantised layer packs; embeddings ``(num_embeddings, embedding_dim)``; anything else with a
    weight (transformers' ``Conv1D``, norms) the weight's own shape.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, module in model.named_modules():
        out_f, in_f = getattr(module, "out_features", None), getattr(module, "in_features", None)
        rows, dim = getattr(module, "num_embeddings", None), getattr(module, "embedding_dim", None)
        weight = getattr(module, "weight", None)
        if isinstance(out_f, int) and isinstance(in_f, int):
            shapes[name] = (out_f, in_f)
        elif isinstance(rows, int) and isinstance(dim, int):
            shapes[name] = (rows, dim)
        elif weight is not None and hasattr(weight, "shape"):
            shapes[name] = tuple(int(n) for n in weight.shape)
    return shapes


def check_adapter_weights(info: AdapterInfo, base: BaseShapes | None = None) -> None:
    """Raise ``AdapterError`` naming the tensor unless the adapter's weights can be served.

    Checks that there are LoRA tensors, each ``lora_A`` has its ``lora_B``, ranks match ``r`` /
    ``rank_pattern``, in/out sizes match the base module (when ``base`` knows it), DoRA magnitude
    vectors only come with ``use_dora``, full module copies have the base's shape, and every value of
    every tensor is finite (read a chunk at a time).
    """
    path = info.path / SAFETENSORS_WEIGHTS
    owner = f"adapter {info.name!r}"
    try:
        shapes = tensor_shapes(path)
    except ValueError as err:
        raise AdapterError(f"{owner}: {err}") from None
    factors: dict[str, set[str]] = {}
    for tensor, shape in sorted(shapes.items()):
        key = tensor.removeprefix(PEFT_PREFIX)
        match = LORA_KEY.match(key)
        if match:
            part = match["part"]
            factors.setdefault(match["module"], set()).add(part)
            _check_factor(info, tensor, shape, match["module"], part, match["param"], base)
        elif base is not None and key.endswith(".weight"):
            _check_full_copy(info, tensor, shape, key.removesuffix(".weight").removesuffix(".base_layer"), base)
    if not factors:
        raise AdapterError(f"{owner}: {SAFETENSORS_WEIGHTS} holds no LoRA tensors (lora_A / lora_B)")
    for module, parts in sorted(factors.items()):
        for first, second in (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B")):
            if (first in parts) != (second in parts):
                have, lacks = (first, second) if first in parts else (second, first)
                raise AdapterError(f"{owner}: module {module} has {have} but no {lacks} in {SAFETENSORS_WEIGHTS}")
    _check_finite(info, path)


def _dims(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in shape) + "]"


def _check_factor(
    info: AdapterInfo, tensor: str, shape: tuple[int, ...], module: str, part: str, param: str | None,
    base: BaseShapes | None,
) -> None:
    """One LoRA tensor against the adapter's rank and, when known, its base module's in/out sizes."""
    owner = f"adapter {info.name!r}: tensor {tensor}"
    if part == "lora_magnitude_vector" and not info.use_dora:
        raise AdapterError(
            f"{owner} is a DoRA magnitude vector but field 'use_dora' is not true: peft would drop it and "
            "serve a different adapter than the one trained"
        )
    rank = info.rank_for(module)
    features = _features(info, module, part, base)
    candidates = [features]
    if features and info.fan_in_fan_out and not part.startswith("lora_embedding"):
        # peft turns fan_in_fan_out off again for an nn.Linear, which a header cannot tell from a Conv1D
        candidates.append((features[1], features[0]))
    for candidate in candidates:
        expected = _expected(part, param, rank, candidate)
        if len(shape) < len(expected):
            raise AdapterError(f"{owner} has shape {_dims(shape)}, expected {len(expected)} dimensions or more")
        got = shape[: len(expected)]  # a convolution's factors carry kernel dimensions after these
        if all(want is None or want == have for want, have in zip(expected, got, strict=True)):
            return
    expected = _expected(part, param, rank, features)
    wanted = [have if want is None else want for want, have in zip(expected, shape, strict=False)]
    why = []
    if len(expected) == 2:
        why.append(f"rank_pattern gives {module} rank {rank}" if rank != info.rank else f"r={rank}")
    if features:
        why.append(f"base module {module} has in_features {features[0]}, out_features {features[1]}")
    raise AdapterError(f"{owner} has shape {_dims(shape)}, expected {_dims(wanted)} ({'; '.join(why)})")


def _expected(part: str, param: str | None, rank: int, features: tuple[int, int] | None) -> tuple[int | None, ...]:
    """The leading dimensions a LoRA tensor must have; None where the base module is not known."""
    in_f, out_f = features if features else (None, None)
    if part == "lora_magnitude_vector" or param == "bias":
        return (out_f,)  # one value per output feature
    return (rank, in_f) if part.endswith("A") else (out_f, rank)


def _features(info: AdapterInfo, module: str, part: str, base: BaseShapes | None) -> tuple[int, int] | None:
    """(in_features, out_features) of the base module as peft sizes its LoRA factors, if known."""
    shape = base.get(module) if base is not None else None
    if shape is None or len(shape) != 2:
        return None
    rows, cols = int(shape[0]), int(shape[1])
    if part.startswith("lora_embedding") or info.fan_in_fan_out:
        # Embedding (num_embeddings, embedding_dim) and Conv1D (in, out) store in-features first.
        return rows, cols
    return cols, rows  # nn.Linear stores (out_features, in_features)


def _check_full_copy(info: AdapterInfo, tensor: str, shape: tuple[int, ...], module: str, base: BaseShapes) -> None:
    """A ``modules_to_save`` copy (or saved embedding) replaces the base weight: same shape or nothing."""
    want = base.get(module)
    if want is not None and tuple(want) != shape:
        raise AdapterError(
            f"adapter {info.name!r}: tensor {tensor} has shape {_dims(shape)} but base module {module}'s weight "
            f"is {_dims(want)}"
        )


def _check_finite(info: AdapterInfo, path: Path) -> None:
    """Scan every floating tensor for NaN / infinity, a chunk of rows at a time."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        for name in sorted(handle.keys()):
            view = handle.get_slice(name)
            shape = view.get_shape()
            if not shape:
                chunks: Any = [handle.get_tensor(name)]
            else:
                step = max(1, SCAN_CHUNK // max(1, math.prod(shape[1:])))
                chunks = (view[start : start + step] for start in range(0, shape[0], step))
            for chunk in chunks:
                if not (chunk.is_floating_point() or chunk.is_complex()):
                    break  # integer and bool tensors cannot hold NaN
                if chunk.element_size() == 1:  # float8: isfinite is not implemented for every 8-bit type
                    chunk = chunk.float()
                if not bool(torch.isfinite(chunk).all()):
                    raise AdapterError(
                        f"adapter {info.name!r}: tensor {name} holds non-finite values (NaN or infinity); "
                        "an adapter trained to NaN answers nothing useful: retrain it"
                    )
