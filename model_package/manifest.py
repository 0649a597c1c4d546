"""File hashes and ``manifest.json``: what the artifact holds, checkable file by file.

Digests, defined so anyone can recompute them with coreutils:
- a file's ``sha256`` is ``sha256sum`` of its bytes;
- an adapter's ``sha256`` is the sha256 of the ``sha256sum``-style lines ``"<sha256>  <path>\\n"`` of
  its files (paths relative to the adapter folder, sorted by path);
- the content hash of a ``--format dir`` tree is the sha256 of ``manifest.json``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_package.layout import MANIFEST, Entry

CHUNK = 1 << 20
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class FileDigest:
    """Size and sha256 of one artifact file."""

    size: int
    sha256: str


def digest_entry(entry: Entry, on_bytes: Callable[[int], object] | None = None) -> FileDigest:
    """Stream one entry through sha256 (1 MiB at a time: memory does not grow with the file)."""
    if entry.data is not None:
        return FileDigest(len(entry.data), hashlib.sha256(entry.data).hexdigest())
    assert entry.source is not None
    digest = hashlib.sha256()
    size = 0
    with open(entry.source, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    return FileDigest(size, digest.hexdigest())


def digest_entries(
    entries: Iterable[Entry], *, workers: int, on_bytes: Callable[[int], object] | None = None
) -> dict[str, FileDigest]:
    """Digest every entry, ``workers`` files at a time (hashlib releases the GIL)."""
    entries = list(entries)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(lambda entry: digest_entry(entry, on_bytes), entries)
        return {entry.arcname: result for entry, result in zip(entries, results, strict=True)}


def tree_digest(digests: dict[str, FileDigest], prefix: str) -> str:
    """The sha256 of the ``sha256sum`` lines of the files under ``prefix/`` (paths relative to it)."""
    start = prefix.rstrip("/") + "/"
    lines = sorted(f"{d.sha256}  {path[len(start):]}\n" for path, d in digests.items() if path.startswith(start))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def build_manifest(
    *,
    package_version: str,
    base_model: dict[str, Any],
    serving: dict[str, Any],
    adapters: list[dict[str, Any]],
    digests: dict[str, FileDigest],
) -> bytes:
    """``manifest.json`` bytes: sorted keys and files, no timestamps, no local paths."""
    manifest = {
        "manifest_format": MANIFEST_FORMAT,
        "package_version": package_version,
        "base_model": base_model,
        "serving": serving,
        "adapters": [
            {**adapter, "sha256": tree_digest(digests, f"adapters/{adapter['name']}")}
            for adapter in sorted(adapters, key=lambda a: a["name"])
        ],
        "files": [
            {"path": path, "size": digests[path].size, "sha256": digests[path].sha256}
            for path in sorted(digests)
            if path != MANIFEST
        ],
    }
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def verify_tree(root: Path) -> dict[str, Any]:
    """Re-hash an extracted artifact against its manifest; raise ``ValueError`` on any difference."""
    manifest: dict[str, Any] = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    listed = {item["path"]: item for item in manifest["files"]}
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {MANIFEST}
    if present != set(listed):
        raise ValueError(f"files differ from the manifest: extra {sorted(present - set(listed))}, "
                         f"missing {sorted(set(listed) - present)}")
    for path, item in listed.items():
        actual = digest_entry(Entry(path, source=root / path))
        if (actual.size, actual.sha256) != (item["size"], item["sha256"]):
            raise ValueError(f"{path}: size or sha256 differs from the manifest")
    return manifest
