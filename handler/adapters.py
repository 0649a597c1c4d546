"""LoRA adapter discovery and validation (standard library only).

An adapter is a folder as written by peft's ``save_pretrained``: ``adapter_config.json`` plus
``adapter_model.safetensors`` (and optionally its own tokenizer files). The handler serves every
folder under ``adapters/<name>/`` (LMI's layout) under its folder name; ``model_package`` runs the
same checks before it packages anything, so a broken adapter never reaches an endpoint.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS_WEIGHTS = "adapter_model.safetensors"
PICKLE_WEIGHTS = "adapter_model.bin"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")

# Names travel in headers, JSON, S3 keys and metric dimensions: keep them boring.
ADAPTER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Names that mean "no adapter" in a request.
BASE_MODEL_ALIASES = frozenset({"base", "__base__"})


class AdapterError(ValueError):
    """An adapter folder cannot be served; the message names the adapter and the field."""


@dataclass(frozen=True)
class AdapterInfo:
    """What the handler and the packager need to know about one adapter."""

    name: str
    path: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    base_model_name_or_path: str | None = None
    modules_to_save: tuple[str, ...] = ()
    has_tokenizer: bool = False
    rank_pattern: dict[str, int] = field(default_factory=dict)

    @property
    def max_rank(self) -> int:
        """Largest rank of any module (``rank_pattern`` can raise it above ``r``)."""
        return max([self.rank, *self.rank_pattern.values()])

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary for model info and the package manifest."""
        return {
            "name": self.name,
            "rank": self.rank,
            "alpha": self.alpha,
            "target_modules": list(self.target_modules),
            "base_model_name_or_path": self.base_model_name_or_path,
            "modules_to_save": list(self.modules_to_save),
            "has_tokenizer": self.has_tokenizer,
        }


def validate_adapter_name(name: str) -> str:
    """Return ``name`` if it is a safe adapter identifier, else raise ``AdapterError``."""
    if not isinstance(name, str) or not ADAPTER_NAME_RE.match(name):
        raise AdapterError(
            f"adapter name {name!r} is not a safe identifier: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in BASE_MODEL_ALIASES:
        raise AdapterError(f"adapter name {name!r} is reserved for the base model")
    return name


def _as_str_tuple(name: str, key: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        # peft writes these from a set: sort them so the same adapter always reads the same
        return tuple(sorted(value))
    raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} field '{key}' must be a string or a list of strings")


def read_adapter(name: str, path: str | Path, *, allow_pickle: bool = False) -> AdapterInfo:
    """Validate the adapter folder at ``path`` and return its ``AdapterInfo``.

    Pickle weights (``adapter_model.bin``) are refused unless ``allow_pickle``: loading a pickle runs
    whatever code it carries, and safetensors is what peft writes by default.
    """
    validate_adapter_name(name)
    folder = Path(path)
    if folder.is_symlink():
        raise AdapterError(f"adapter {name!r}: {folder} is a symbolic link; copy the folder instead")
    if not folder.is_dir():
        raise AdapterError(f"adapter {name!r}: {folder} is not a folder")
    for entry in folder.rglob("*"):
        if entry.is_symlink():
            raise AdapterError(f"adapter {name!r}: {entry.relative_to(folder)} is a symbolic link")
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} is missing in {folder}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} is unreadable: {err}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} must hold a JSON object")

    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter {name!r}: field 'peft_type' must be LORA, got {config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"adapter {name!r}: field 'r' must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise AdapterError(f"adapter {name!r}: field 'lora_alpha' must be a positive number, got {alpha!r}")
    target_modules = _as_str_tuple(name, "target_modules", config.get("target_modules"))
    if not target_modules:
        raise AdapterError(f"adapter {name!r}: field 'target_modules' is empty")
    rank_pattern = config.get("rank_pattern") or {}
    if not isinstance(rank_pattern, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in rank_pattern.values()
    ):
        raise AdapterError(f"adapter {name!r}: field 'rank_pattern' must map module names to positive ranks")

    has_safetensors = (folder / SAFETENSORS_WEIGHTS).is_file()
    has_pickle = (folder / PICKLE_WEIGHTS).is_file()
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise AdapterError(
                f"adapter {name!r}: only pickle weights ({PICKLE_WEIGHTS}) found; pickles can run code when "
                "loaded. Convert them to safetensors (model_package build --convert-pickle)"
            )
        if not has_pickle:
            raise AdapterError(f"adapter {name!r}: weights are missing: expected {SAFETENSORS_WEIGHTS} in {folder}")

    base = config.get("base_model_name_or_path")
    return AdapterInfo(
        name=name,
        path=folder,
        rank=rank,
        alpha=float(alpha),
        target_modules=target_modules,
        base_model_name_or_path=base if isinstance(base, str) and base else None,
        modules_to_save=_as_str_tuple(name, "modules_to_save", config.get("modules_to_save")),
        has_tokenizer=any((folder / f).is_file() for f in TOKENIZER_FILES),
        rank_pattern=dict(rank_pattern),
    )


def discover_adapters(adapters_dir: str | Path, *, allow_pickle: bool = False) -> dict[str, AdapterInfo]:
    """Every adapter under ``adapters_dir`` (one folder each, named by the folder), sorted by name.

    A missing folder means no adapters; hidden entries (``.cache`` ...) and plain files are skipped.
    """
    root = Path(adapters_dir)
    if not root.is_dir():
        return {}
    found: dict[str, AdapterInfo] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not (entry.is_dir() or entry.is_symlink()):
            continue
        found[entry.name] = read_adapter(entry.name, entry, allow_pickle=allow_pickle)
    return found
