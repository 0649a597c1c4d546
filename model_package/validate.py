"""Package-level checks: what one adapter folder cannot tell on its own.

Per-adapter checks (config fields, weights present, pickles, links) are ``handler.adapters.read_adapter``
and the weights check (shapes, NaN) ``handler.adapter_weights.check_adapter_weights``: the same code the
endpoint runs at start-up. This module adds what needs the whole build: name collisions, the base model
(declared name, module names, vocabulary) and the serving options.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from handler.adapter_weights import check_adapter_weights
from handler.adapters import (
    ADAPTER_CONFIG,
    SAFETENSORS_WEIGHTS,
    AdapterInfo,
    check_unmerged,
    read_adapter,
    validate_adapter_name,
)
from model_package.base import BaseModel, is_pickle, list_files, safetensors_shapes
from model_package.config import BuildOptions, PackageError
from model_package.convert import convert_pickle_adapter

# Modules whose weight has one row per vocabulary entry.
EMBEDDING_MODULES = ("embed_tokens", "lm_head", "wte", "embed_out", "word_embeddings")


@dataclass(frozen=True)
class Adapter:
    """A validated adapter: what it is, where its files are read from, and which files ship."""

    info: AdapterInfo
    source: Path
    files: tuple[str, ...]


def check_names(pairs: tuple[tuple[str, Path], ...]) -> None:
    """Every name a safe identifier; no two equal, even ignoring case (S3 keys, case-blind disks)."""
    seen: dict[str, str] = {}
    for name, _ in pairs:
        validate_adapter_name(name)
        other = seen.get(name.lower())
        if other is not None:
            same = "given twice" if other == name else f"collides with {other!r} (names must differ beyond case)"
            raise PackageError(f"adapter {name!r}: name {same}")
        seen[name.lower()] = name


def load_adapters(options: BuildOptions, staging: Path, base: BaseModel | None) -> list[Adapter]:
    """Read, convert (``--convert-pickle``) and check every adapter; raise on the first problem."""
    check_names(options.adapters)
    adapters = []
    for name, path in options.adapters:
        info = read_adapter(name, path, allow_pickle=options.convert_pickle)
        source = info.path
        if not (source / SAFETENSORS_WEIGHTS).is_file():
            source = convert_pickle_adapter(name, source, staging / name)
            info = read_adapter(name, source)
        owner = f"adapter {name!r}"
        files = tuple(f for f in list_files(source, owner=owner, follow_file_links=False) if not is_pickle(f))
        shapes = safetensors_shapes(source / SAFETENSORS_WEIGHTS, owner=owner)
        check_serving(info, options)
        check_base_name(info, options, base)
        if base is not None:
            check_target_modules(info, source, base)
            check_vocab(info, source, shapes, base)
        # The handler runs the same check at start-up, against the loaded model's modules.
        check_adapter_weights(info, base.module_shapes if base is not None else None)
        adapters.append(Adapter(info=info, source=source, files=files))
    return adapters


def check_serving(info: AdapterInfo, options: BuildOptions) -> None:
    """Rank, ``modules_to_save`` and DoRA against the serving options."""
    if not options.merge:
        check_unmerged(info)
    if info.max_rank > options.max_lora_rank:
        field = "r" if info.max_rank == info.rank else "rank_pattern"
        raise PackageError(
            f"adapter {info.name!r}: field '{field}' gives rank {info.max_rank}, above --max-lora-rank "
            f"{options.max_lora_rank}"
        )
    if info.modules_to_save and not (options.allow_modules_to_save or options.merge):
        raise PackageError(
            f"adapter {info.name!r}: field 'modules_to_save' lists {list(info.modules_to_save)}: full copies of "
            "those modules cost memory per adapter and LMI's LoRA backends cannot serve them; pass "
            "--allow-modules-to-save (the bundled handler serves them) or --merge"
        )


def _last_part(reference: str) -> str:
    return reference.rstrip("/").rsplit("/", 1)[-1].lower()


def check_base_name(info: AdapterInfo, options: BuildOptions, base: BaseModel | None) -> None:
    """The adapter's ``base_model_name_or_path`` must name the base being packaged (by last part)."""
    declared = info.base_model_name_or_path
    if not declared or options.allow_base_mismatch:
        return
    if base is not None:
        if Path(declared).expanduser().resolve() == base.path.resolve():
            return
        names = base.name_hints
    else:
        names = frozenset({_last_part(options.base_model)})
    if _last_part(declared) not in names:
        raise PackageError(
            f"adapter {info.name!r}: field 'base_model_name_or_path' is {declared!r}, which contradicts "
            f"--base-model {options.base_model!r} (pass --allow-base-mismatch if they are the same model)"
        )


def check_target_modules(info: AdapterInfo, source: Path, base: BaseModel) -> None:
    """Every ``target_modules`` entry must match a module of the base, as peft matches them."""
    raw = json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("target_modules")
    modules = base.module_names
    if isinstance(raw, str):
        if raw == "all-linear":
            return
        try:
            pattern = re.compile(raw)
        except re.error as err:
            raise PackageError(f"adapter {info.name!r}: field 'target_modules' is not a valid regex: {err}") from None
        if not any(pattern.fullmatch(module) for module in modules):
            raise PackageError(f"adapter {info.name!r}: field 'target_modules' ({raw!r}) matches no base module")
        return
    missing = [
        key for key in info.target_modules
        if not any(module == key or module.endswith("." + key) for module in modules)
    ]
    if missing:
        raise PackageError(
            f"adapter {info.name!r}: field 'target_modules' names modules the base model does not have: "
            f"{', '.join(missing)}"
        )


def _tokenizer_size(path: Path) -> int | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        ids = list(data["model"]["vocab"].values()) + [token["id"] for token in data.get("added_tokens", [])]
        return max(ids) + 1 if ids else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None


def check_vocab(info: AdapterInfo, source: Path, shapes: dict[str, tuple[int, ...]], base: BaseModel) -> None:
    """Embedding-sized tensors (and the adapter's own tokenizer) must fit the base's vocabulary."""
    vocab = base.vocab_size
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
            raise PackageError(
                f"adapter {info.name!r}: tensor {tensor} has {rows} vocabulary rows but the base model's "
                f"vocab_size is {vocab} (resize the base embeddings or retrain the adapter)"
            )
    tokens = _tokenizer_size(source / "tokenizer.json") if info.has_tokenizer else None
    if tokens is not None and tokens > vocab:
        raise PackageError(
            f"adapter {info.name!r}: its tokenizer has {tokens} tokens but the base model's vocab_size is {vocab}"
        )
