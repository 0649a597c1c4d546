"""One build: validate, lay out, hash, write (tar.gz or tree) into a temporary sibling, rename.

Nothing appears at the output path unless the whole build succeeded: the work happens in a
temporary folder next to it (same file system) and the result is renamed into place at the end.
A bundled base's and adapters' config and tokenizer files go in as copies that transformers 4.x and
5.x read alike (``lora_endpoint.packaging.compat``); the source folders are only read.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lora_endpoint
from lora_endpoint.contract.manifest import (
    CHUNK,
    MANIFEST,
    Entry,
    FileDigest,
    build_manifest,
    digest_entries,
    tree_digest,
)
from lora_endpoint.packaging.archive import write_tar_gz
from lora_endpoint.packaging.base import BaseModel, list_files, read_base_model
from lora_endpoint.packaging.config import BuildOptions, PackageError
from lora_endpoint.packaging.convert import merge_adapter
from lora_endpoint.packaging.layout import (
    bundled_entries,
    folder_entries,
    generated_files,
    handler_files,
)
from lora_endpoint.packaging.progress import progress_bar
from lora_endpoint.packaging.validate import Adapter, load_adapters


@dataclass(frozen=True)
class BuildResult:
    """Where the artifact is and the hash that names it (archive sha256, or manifest sha256 for a tree)."""

    path: Path
    format: str
    content_hash: str
    manifest: dict[str, Any]


def _copy_entry(entry: Entry, dest: Path, on_bytes: Callable[[int], None]) -> FileDigest:
    """Copy (or write) one entry under ``dest``, hashing it on the way: one read per file."""
    out = dest / entry.arcname
    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with open(out, "xb") as sink:
        if entry.data is not None:
            sink.write(entry.data)
            digest.update(entry.data)
            size = len(entry.data)
        else:
            assert entry.source is not None
            with open(entry.source, "rb") as source:
                while chunk := source.read(CHUNK):
                    sink.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    on_bytes(len(chunk))
    out.chmod(0o644)
    return FileDigest(size, digest.hexdigest())


def _base_section(options: BuildOptions, base: BaseModel | None, merged: Adapter | None) -> dict[str, Any]:
    if base is None:
        return {"source": options.base_kind, "reference": options.base_model}
    section: dict[str, Any] = {"source": "bundled", "reference": "base", "model_type": base.config.get("model_type")}
    if merged is not None:
        files = folder_entries("merged", merged.source, merged.files)
        section["merged_adapter"] = {
            **merged.info.describe(),
            "sha256": tree_digest(digest_entries(files, workers=1), "merged"),
        }
    return section


def _serving_section(options: BuildOptions) -> dict[str, Any]:
    return {
        "dtype": options.dtype,
        "djl_mode": options.djl_mode,
        "batch_size": options.batch_size,
        "max_batch_delay_ms": options.max_batch_delay_ms,
        "max_new_tokens": options.max_new_tokens,
        "tensor_parallel_degree": options.tensor_parallel_degree,
        "max_lora_rank": options.max_lora_rank,
    }


def _check_output(output: Path, fmt: str) -> None:
    if fmt == "tar" and output.is_dir():
        raise PackageError(f"--output {output} is a folder; --format tar writes a file")
    if fmt == "dir" and output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise PackageError(f"--output {output} exists; --format dir needs a new or empty folder")


def build(options: BuildOptions) -> BuildResult:
    """Validate the inputs and write the artifact at ``options.output``; see the module docstring."""
    output = options.output.expanduser().absolute()
    _check_output(output, options.format)
    output.parent.mkdir(parents=True, exist_ok=True)
    workers = options.workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as tmp:
        work = Path(tmp)
        base = read_base_model(options.base_model) if options.base_kind == "local" else None
        adapters = load_adapters(options, work / "converted", base)
        entries = handler_files() + generated_files(options, None if base else options.base_model)
        merged = adapters[0] if options.merge else None
        if base is not None and merged is not None:
            folder = merge_adapter(base.path, merged.source, work / "merged")
            files = tuple(list_files(folder, owner="merged model", follow_file_links=False))
            entries += bundled_entries("base", folder, files, owner="merged model")
        elif base is not None:
            entries += bundled_entries("base", base.path, base.files, owner="base model")
        for adapter in adapters if merged is None else []:
            entries += bundled_entries(f"adapters/{adapter.info.name}", adapter.source, adapter.files,
                                       owner=f"adapter {adapter.info.name!r}")

        sizes = {e.arcname: (len(e.data) if e.data is not None else os.path.getsize(e.source or "")) for e in entries}
        total = sum(sizes.values())
        tree = work / "tree"
        with progress_bar("hashing" if options.format == "tar" else "copying", total, options.progress) as tick:
            if options.format == "tar":
                digests = digest_entries(entries, workers=workers, on_bytes=tick)
            else:
                with ThreadPoolExecutor(max_workers=workers) as pool:
                    copied = pool.map(lambda e: _copy_entry(e, tree, tick), entries)
                    digests = dict(zip([e.arcname for e in entries], copied, strict=True))
        manifest_bytes = build_manifest(
            package_version=lora_endpoint.__version__,
            base_model=_base_section(options, base, merged),
            serving=_serving_section(options),
            adapters=[a.info.describe() | {"max_rank": a.info.max_rank} for a in (adapters if merged is None else [])],
            digests=digests,
        )
        manifest_entry = Entry(MANIFEST, data=manifest_bytes)
        if options.format == "tar":
            partial = work / "model.tar.gz"
            with progress_bar("compressing", total, options.progress) as tick, open(partial, "xb") as sink:
                content_hash = write_tar_gz(
                    [*entries, manifest_entry],
                    {**{k: d.size for k, d in digests.items()}, MANIFEST: len(manifest_bytes)},
                    sink,
                    level=options.compress_level,
                    workers=workers,
                    on_bytes=tick,
                )
            partial.chmod(0o644)
            os.replace(partial, output)
        else:
            _copy_entry(manifest_entry, tree, lambda n: None)
            content_hash = hashlib.sha256(manifest_bytes).hexdigest()
            if output.exists():
                output.rmdir()
            tree.rename(output)
    return BuildResult(path=output, format=options.format, content_hash=content_hash,
                       manifest=json.loads(manifest_bytes))
