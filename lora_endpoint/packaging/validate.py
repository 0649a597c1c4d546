"""Package-level checks: what one adapter folder cannot tell on its own.

Per-adapter checks (config fields, weights present, pickles, links) are ``lora_endpoint.handler.adapters.read_adapter``
and the weights check (shapes, NaN) ``lora_endpoint.handler.adapter_weights.check_adapter_weights``: the same code the
endpoint runs at start-up. This module adds what needs the whole build: name collisions, the base model
(declared name, module names, vocabulary) and the serving options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lora_endpoint.handler import adapter_checks
from lora_endpoint.handler.adapter_weights import check_adapter_weights
from lora_endpoint.handler.adapters import (
    SAFETENSORS_WEIGHTS,
    AdapterError,
    AdapterInfo,
    check_unmerged,
    read_adapter,
    validate_adapter_name,
)
from lora_endpoint.packaging.base import BaseModel, is_pickle, list_files, safetensors_shapes
from lora_endpoint.packaging.config import BuildOptions, PackageError
from lora_endpoint.packaging.convert import convert_pickle_adapter


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


def _refused(check: Callable[[], None]) -> None:
    """Run one of the handler's checks; its ``AdapterError`` becomes the packager's ``PackageError``."""
    try:
        check()
    except AdapterError as err:
        raise PackageError(str(err)) from None


def check_serving(info: AdapterInfo, options: BuildOptions) -> None:
    """Rank, ``modules_to_save`` and DoRA against the serving options."""
    if not options.merge:
        check_unmerged(info)
    _refused(lambda: adapter_checks.check_rank(info, options.max_lora_rank, flag="--max-lora-rank"))
    if info.modules_to_save and not (options.allow_modules_to_save or options.merge):
        raise PackageError(
            f"adapter {info.name!r}: field 'modules_to_save' lists {list(info.modules_to_save)}: full copies of "
            "those modules cost memory per adapter and LMI's LoRA backends cannot serve them; pass "
            "--allow-modules-to-save (the bundled handler serves them) or --merge"
        )


def check_base_name(info: AdapterInfo, options: BuildOptions, base: BaseModel | None) -> None:
    """The adapter's ``base_model_name_or_path`` must name the base being packaged (by last part)."""
    if options.allow_base_mismatch:
        return
    names = base.name_hints if base is not None else frozenset({adapter_checks.last_part(options.base_model)})
    _refused(lambda: adapter_checks.check_base_name(
        info, names, base_path=base.path if base is not None else None, served=f"--base-model {options.base_model!r}",
        hint=" (pass --allow-base-mismatch if they are the same model)"))


def check_target_modules(info: AdapterInfo, source: Path, base: BaseModel) -> None:
    """Every ``target_modules`` entry must match a module of the base, as peft matches them."""
    _refused(lambda: adapter_checks.check_target_modules(info, base.module_names))


def check_vocab(info: AdapterInfo, source: Path, shapes: dict[str, tuple[int, ...]], base: BaseModel) -> None:
    """Embedding-sized tensors (and the adapter's own tokenizer) must fit the base's vocabulary."""
    _refused(lambda: adapter_checks.check_vocab(info, shapes, base.vocab_size))
