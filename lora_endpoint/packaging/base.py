"""What the packager needs to know about a local base model, read from metadata only.

Weight names and shapes come from the safetensors headers (``safe_open``; every shard of a sharded
base), never from loading the tensors, so checking a 70B base costs a few header reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_endpoint.handler.adapter_weights import tensor_shapes
from lora_endpoint.packaging.config import PackageError

SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass(frozen=True)
class BaseModel:
    """A local base model folder: its config, weight (module) names and the files to bundle."""

    path: Path
    config: dict[str, Any]
    weight_names: frozenset[str]
    files: tuple[str, ...]
    """Relative POSIX paths to bundle, sorted; pickle weights and hidden files left out."""
    weight_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    """Tensor name -> shape, from the headers of every safetensors file (every shard of a sharded base)."""

    @property
    def vocab_size(self) -> int | None:
        """``vocab_size`` from config.json (or its ``text_config``), if it says."""
        for section in (self.config, self.config.get("text_config") or {}):
            value = section.get("vocab_size") if isinstance(section, dict) else None
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        return None

    @property
    def module_names(self) -> frozenset[str]:
        """Module paths that own a weight (``model.layers.0.self_attn.q_proj``)."""
        return frozenset(name.rsplit(".", 1)[0] for name in self.weight_names if "." in name)

    @property
    def module_shapes(self) -> dict[str, tuple[int, ...]]:
        """Module path -> the shape of its ``weight``, what the adapter weights check compares against."""
        return {name.removesuffix(".weight"): shape for name, shape in self.weight_shapes.items()
                if name.endswith(".weight")}

    @property
    def name_hints(self) -> frozenset[str]:
        """Names this base goes by: its folder name and config's ``_name_or_path`` (last parts, lower case)."""
        hints = {self.path.resolve().name.lower()}
        for part in self.path.absolute().parts:  # hub cache: .../models--org--name/snapshots/<rev>
            if part.startswith("models--"):
                hints.add(part.rsplit("--", 1)[-1].lower())
        recorded = self.config.get("_name_or_path")
        if isinstance(recorded, str) and recorded:
            hints.add(recorded.rstrip("/").rsplit("/", 1)[-1].lower())
        return frozenset(hints)


def is_pickle(name: str) -> bool:
    """True for file names that are (or usually hold) Python pickles."""
    return name.lower().endswith(PICKLE_SUFFIXES)


def list_files(folder: Path, *, owner: str, follow_file_links: bool) -> list[str]:
    """Regular files under ``folder`` as sorted relative POSIX paths, skipping hidden entries.

    Refuses what could escape the folder or is not a plain file: links to folders, broken links,
    and (unless ``follow_file_links``) any symbolic link; also FIFOs, sockets and devices.
    """
    found: list[str] = []
    for entry in sorted(folder.rglob("*")):
        rel = entry.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if entry.is_symlink():
            if not follow_file_links:
                raise PackageError(f"{owner}: {rel.as_posix()} is a symbolic link; copy the file instead")
            if not entry.resolve().is_file():
                raise PackageError(f"{owner}: {rel.as_posix()} is a link to a folder or to nothing")
        elif entry.is_dir():
            continue
        elif not entry.is_file():
            raise PackageError(f"{owner}: {rel.as_posix()} is not a regular file")
        found.append(rel.as_posix())
    return found


def read_json_object(path: Path, *, owner: str) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a ``PackageError`` naming ``owner`` and the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise PackageError(f"{owner}: {path.name} is unreadable: {str(err)[:200]}") from None
    if not isinstance(data, dict):
        raise PackageError(f"{owner}: {path.name} must hold a JSON object")
    return data


def safetensors_shapes(path: Path, *, owner: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (no tensor data is read)."""
    try:
        return tensor_shapes(path)
    except ValueError as err:
        raise PackageError(f"{owner}: {err}") from None


def read_base_model(folder: str | Path) -> BaseModel:
    """Inspect a local base model folder: config.json, safetensors weights, tokenizer files."""
    path = Path(folder).expanduser()
    owner = "base model"
    files = list_files(path, owner=owner, follow_file_links=True)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise PackageError(f"{owner}: config.json is missing in {path}")
    config = read_json_object(config_path, owner=owner)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise PackageError(f"{owner}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in {path}")

    weights = [name for name in files if name.endswith(".safetensors") and "/" not in name]
    if not weights:
        pickles = [name for name in files if is_pickle(name)]
        hint = f"; only pickle weights found ({', '.join(pickles)})" if pickles else ""
        raise PackageError(f"{owner}: no *.safetensors weights in {path}{hint}")
    names: set[str] = set()
    shapes: dict[str, tuple[int, ...]] = {}
    index_path = path / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
            raise PackageError(f"{owner}: {SAFETENSORS_INDEX} is unreadable: {str(err)[:200]}") from None
        for shard in sorted(set(weight_map.values()), key=str):
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith("."):
                raise PackageError(f"{owner}: {SAFETENSORS_INDEX} points outside the folder: {shard!r}")
            if not (path / shard).is_file():
                raise PackageError(f"{owner}: {SAFETENSORS_INDEX} names {shard}, which is missing")
            shapes.update(safetensors_shapes(path / shard, owner=owner))
        names.update(weight_map)
    else:
        for name in weights:
            shapes.update(safetensors_shapes(path / name, owner=owner))
        names.update(shapes)
    # Pickle weights next to safetensors ones (hub repos often carry both) are never bundled.
    bundled = tuple(name for name in files if not is_pickle(name))
    return BaseModel(path=path, config=config, weight_names=frozenset(names), files=bundled, weight_shapes=shapes)
