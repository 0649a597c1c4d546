"""LoRA adapter discovery and validation (standard library only).

An adapter is a folder as written by peft's ``save_pretrained``: ``adapter_config.json`` plus
``adapter_model.safetensors`` (and optionally its own tokenizer files). The handler serves every
folder under ``adapters/<name>/`` (LMI's layout) under its folder name; ``lora_endpoint.packaging`` runs the
same checks before it packages anything, so a broken adapter never reaches an endpoint.
"""

from __future__ import annotations

import json
import math
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
# peft LoRA variants (config field -> name) this handler refuses: their factors or forward pass are not
# plain LoRA, so the weights check cannot vouch for them (peft 0.13, in older images, knows none of them).
LORA_VARIANTS = {
    "use_qalora": "QALoRA",
    "alora_invocation_tokens": "aLoRA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow routing",
    "kasa_config": "KaSA",
}


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
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    fan_in_fan_out: bool = False
    use_dora: bool = False

    @property
    def max_rank(self) -> int:
        """Largest rank of any module (``rank_pattern`` can raise it above ``r``)."""
        return max([self.rank, *self.rank_pattern.values()])

    def rank_for(self, module: str) -> int:
        """The rank peft gives ``module``: the first ``rank_pattern`` key matching its path's end, else ``r``."""
        for key, rank in self.rank_pattern.items():
            if re.match(rf"(.*\.)?({key})$", module):  # peft's get_pattern_key
                return rank
        return self.rank

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


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """Path and value of the first NaN / infinity in parsed JSON (``json`` accepts ``NaN``, ``Infinity``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def _positive_number(value: Any) -> bool:
    try:
        return isinstance(value, int | float) and not isinstance(value, bool) and 0 < float(value) < math.inf
    except OverflowError:  # an integer too large for a float
        return False


def _patterns(name: str, config: dict[str, Any], key: str, valid: Any, what: str) -> dict[str, Any]:
    """``rank_pattern`` / ``alpha_pattern``: regex keys (as peft reads them) -> values passing ``valid``."""
    pattern = config.get(key) or {}
    if not isinstance(pattern, dict) or not all(valid(v) for v in pattern.values()):
        raise AdapterError(f"adapter {name!r}: field '{key}' must map module names to {what}")
    for module in pattern:
        try:
            re.compile(module)
        except re.error as err:
            raise AdapterError(f"adapter {name!r}: field '{key}' key {module!r} is not a valid regex: {err}") from None
    return dict(pattern)


def _check_variant(name: str, config: dict[str, Any]) -> None:
    """Refuse peft LoRA variants and options the handler cannot serve next to other adapters."""
    if config.get("target_parameters"):
        raise AdapterError(
            f"adapter {name!r}: field 'target_parameters' is set: peft cannot route LoRA on parameters per row "
            "in a mixed-adapter batch (its ParamWrapper refuses adapter_names); target modules instead"
        )
    if config.get("layer_replication"):
        raise AdapterError(
            f"adapter {name!r}: field 'layer_replication' is set: loading it rewrites the base model's layers, "
            "which the base and every other adapter would then run on"
        )
    variants = [(key, label) for key, label in LORA_VARIANTS.items() if config.get(key)]
    if config.get("init_lora_weights") == "mica":
        variants.append(("init_lora_weights", "MiCA"))
    if variants:
        key, label = variants[0]
        raise AdapterError(
            f"adapter {name!r}: field '{key}' makes it a {label} adapter, a peft LoRA variant this handler does "
            "not serve (plain LoRA only; DoRA only merged)"
        )


def check_unmerged(info: AdapterInfo) -> None:
    """Refuse what can be served only merged into the base: DoRA.

    Mixed-adapter batches route each row through peft's ``adapter_names``, which peft (0.13 to 0.21)
    refuses for DoRA ("Cannot pass `adapter_names` when DoRA is enabled"); merging it is exact.
    """
    if info.use_dora:
        raise AdapterError(
            f"adapter {info.name!r}: field 'use_dora' is true: DoRA adapters cannot share a batch with other "
            "adapters (peft refuses DoRA in adapter_names) and vLLM, LMI's LoRA backend, refuses DoRA; merge it "
            "into the base (lora_endpoint.packaging build --merge, or LORA_MERGE) or retrain without DoRA"
        )


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
        bad = _non_finite(config)
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, or a 5000-digit number
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} is unreadable: {str(err)[:200]}") from None
    if not isinstance(config, dict):
        raise AdapterError(f"adapter {name!r}: {ADAPTER_CONFIG} must hold a JSON object")
    if bad is not None:
        raise AdapterError(f"adapter {name!r}: field '{bad[0]}' must be a finite number, got {bad[1]}")

    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise AdapterError(f"adapter {name!r}: field 'peft_type' must be LORA, got {config.get('peft_type')!r}")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"adapter {name!r}: field 'r' must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha", rank)
    if not _positive_number(alpha):
        raise AdapterError(f"adapter {name!r}: field 'lora_alpha' must be a positive number, got {str(alpha)[:40]}")
    target_modules = _as_str_tuple(name, "target_modules", config.get("target_modules"))
    if not target_modules:
        raise AdapterError(f"adapter {name!r}: field 'target_modules' is empty")
    rank_pattern = _patterns(
        name, config, "rank_pattern", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "positive ranks",
    )
    alpha_pattern = _patterns(name, config, "alpha_pattern", _positive_number, "positive numbers")
    _check_variant(name, config)

    has_safetensors = (folder / SAFETENSORS_WEIGHTS).is_file()
    has_pickle = (folder / PICKLE_WEIGHTS).is_file()
    if not has_safetensors:
        if has_pickle and not allow_pickle:
            raise AdapterError(
                f"adapter {name!r}: only pickle weights ({PICKLE_WEIGHTS}) found; pickles can run code when "
                "loaded. Convert them to safetensors (lora_endpoint.packaging build --convert-pickle)"
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
        rank_pattern=rank_pattern,
        alpha_pattern={key: float(value) for key, value in alpha_pattern.items()},
        fan_in_fan_out=bool(config.get("fan_in_fan_out")),
        use_dora=bool(config.get("use_dora")),
    )


def discover_adapters(
    adapters_dir: str | Path, *, allow_pickle: bool = False, failures: dict[str, Exception] | None = None
) -> dict[str, AdapterInfo]:
    """Every adapter under ``adapters_dir`` (one folder each, named by the folder), sorted by name.

    A missing folder means no adapters; hidden entries (``.cache`` ...) and plain files are skipped.
    The first broken adapter raises ``AdapterError``, unless ``failures`` is given: then each broken
    one is recorded there by folder name and left out.
    """
    root = Path(adapters_dir)
    if not root.is_dir():
        return {}
    found: dict[str, AdapterInfo] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or not (entry.is_dir() or entry.is_symlink()):
            continue
        try:
            found[entry.name] = read_adapter(entry.name, entry, allow_pickle=allow_pickle)
        except AdapterError as err:
            if failures is None:
                raise
            failures[entry.name] = err
    return found
