"""File hashes and ``manifest.json``: what the artifact holds, checkable file by file - written by the
packager, verified by the local endpoint and the extractor, read by the CDK app.

Digests, defined so anyone can recompute them with coreutils:
- a file's ``sha256`` is ``sha256sum`` of its bytes;
- an adapter's ``sha256`` is the sha256 of the ``sha256sum``-style lines ``"<sha256>  <path>\\n"`` of
  its files (paths relative to the adapter folder, sorted by path);
- the content hash of a ``--format dir`` tree is the sha256 of ``manifest.json``.

Reading one back (``parse_manifest``) is strict: a manifest comes from the artifact, so it is input like
any other, and every way it can be malformed is a ``ManifestError`` naming the field, never a
``TypeError`` or ``KeyError`` from deep inside a caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"


class PackageError(ValueError):
    """Bad input for a build or an upload, or a package that breaks this contract; the message names the
    adapter / option / file and the field. (Defined here, not in the packager, so that readers of packages -
    the local endpoint, the CDK app - share it without importing the packager.)"""


@dataclass(frozen=True)
class Entry:
    """One file of the artifact: copied from ``source`` or written from ``data``."""

    arcname: str
    source: Path | None = None
    data: bytes | None = None


CHUNK = 1 << 20
MANIFEST_FORMAT = 1
# Far above any real manifest (about 150 bytes a file), small enough to read into memory.
MAX_MANIFEST_BYTES = 64 << 20
MAX_FILE_SIZE = (1 << 63) - 1
SHA256_RE = re.compile(r"[0-9a-f]{64}")
SHOWN = 3  # names quoted in one error line; the rest are counted


class ManifestError(PackageError):
    """A ``manifest.json`` that is malformed, or files that do not match it."""


@dataclass(frozen=True)
class FileDigest:
    """Size and sha256 of one artifact file."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A parsed, checked ``manifest.json``: the raw document and its ``files`` by path."""

    data: dict[str, Any]
    files: dict[str, FileDigest]

    @property
    def total_bytes(self) -> int:
        """Bytes of every listed file (``manifest.json`` itself not included)."""
        return sum(digest.size for digest in self.files.values())

    @cached_property
    def folders(self) -> frozenset[str]:
        """Every folder the listed files need (their parents)."""
        return frozenset(parent_folders(self.files))

    def check_member(self, path: str, size: int) -> FileDigest:
        """What ``path`` must hash to; refuse a file that is not listed or has another size."""
        expected = self.files.get(path)
        if expected is None:
            raise ManifestError(f"{path!r} is not listed in {MANIFEST}")
        if size != expected.size:
            raise ManifestError(f"{path!r} is {size} bytes, {MANIFEST} says {expected.size}")
        return expected

    def check_listing(self, sizes: dict[str, int], folders: Iterable[str] = ()) -> None:
        """Refuse any extra or missing file or folder, and any size that differs (nothing is read)."""
        extra = sorted(set(sizes) - set(self.files))
        if extra:
            raise ManifestError(f"{_names(extra)} not listed in {MANIFEST}")
        extra_folders = sorted(set(folders) - self.folders)
        if extra_folders:
            raise ManifestError(f"{_names(extra_folders, 'folder')} not needed by any file in {MANIFEST}")
        missing = sorted(set(self.files) - set(sizes))
        if missing:
            raise ManifestError(f"{_names(missing)} listed in {MANIFEST} but missing")
        for path, size in sizes.items():
            self.check_member(path, size)

    def check_digest(self, path: str, actual: FileDigest) -> None:
        """Refuse a listed file whose size or sha256 differs."""
        self.check_member(path, actual.size)
        if actual.sha256 != self.files[path].sha256:
            raise ManifestError(f"{path!r}: sha256 differs from {MANIFEST} (changed after the build?)")


def _names(paths: list[str], kind: str = "file") -> str:
    shown = ", ".join(repr(p) for p in paths[:SHOWN])
    more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
    return f"{len(paths)} {kind}{'s' if len(paths) > 1 else ''} ({shown}{more})"


def parent_folders(paths: Iterable[str]) -> set[str]:
    """Every folder above the POSIX ``paths`` (``a/b/c`` -> ``a``, ``a/b``)."""
    found: set[str] = set()
    for name in paths:
        parts = name.split("/")[:-1]
        found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return found


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


def _check_path(value: object, where: str) -> str:
    """A relative POSIX path in normal form that stays inside the artifact."""
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: path must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ManifestError(f"{where}: path {value!r} is not valid Unicode") from None
    if value.startswith("/") or "\\" in value or (len(value) > 1 and value[1] == ":"):
        raise ManifestError(f"{where}: path {value!r} is absolute or not POSIX")
    parts = value.split("/")
    if ".." in parts:
        raise ManifestError(f"{where}: path {value!r} climbs out of the artifact ('..')")
    if "" in parts or "." in parts or "\0" in value:
        raise ManifestError(f"{where}: path {value!r} is not in normal form")
    if value == MANIFEST:
        raise ManifestError(f"{where}: {MANIFEST} lists itself")
    return value


def _check_file(item: object, index: int) -> tuple[str, FileDigest]:
    where = f"files[{index}]"
    if not isinstance(item, dict):
        raise ManifestError(f"{where} must be an object with path, size and sha256")
    missing = [key for key in ("path", "size", "sha256") if key not in item]
    if missing:
        raise ManifestError(f"{where} has no {', '.join(missing)}")
    path = _check_path(item["path"], where)
    size, sha256 = item["size"], item["sha256"]
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_FILE_SIZE:
        raise ManifestError(f"{where} ({path!r}): size must be a non-negative integer")
    if not isinstance(sha256, str) or not SHA256_RE.fullmatch(sha256):
        raise ManifestError(f"{where} ({path!r}): sha256 must be 64 lowercase hex digits")
    return path, FileDigest(size, sha256)


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and check ``manifest.json`` bytes; a ``ManifestError`` says what is wrong."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST} is {len(raw)} bytes, more than {MAX_MANIFEST_BYTES}")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # also bad UTF-8, and integers past the digit limit
        raise ManifestError(f"{MANIFEST} is not valid JSON ({type(err).__name__})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{MANIFEST} must be a JSON object, not {type(data).__name__}")
    if data.get("manifest_format") != MANIFEST_FORMAT or isinstance(data.get("manifest_format"), bool):
        raise ManifestError(f"{MANIFEST}: manifest_format must be {MANIFEST_FORMAT}")
    items = data.get("files")
    if not isinstance(items, list):
        raise ManifestError(f"{MANIFEST}: files must be a list")
    files: dict[str, FileDigest] = {}
    for index, item in enumerate(items):
        path, digest = _check_file(item, index)
        if path in files:
            raise ManifestError(f"{MANIFEST}: {path!r} is listed twice")
        files[path] = digest
    clash = sorted(set(files) & parent_folders(files))
    if clash:
        raise ManifestError(f"{MANIFEST}: {clash[0]!r} is listed as a file and is also a folder of another file")
    return Manifest(data, files)


def read_manifest(path: Path) -> Manifest:
    """Read and parse ``path``: a regular file (not a link) of at most ``MAX_MANIFEST_BYTES``."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise ManifestError(f"{path.parent} has no {MANIFEST}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ManifestError(f"{path} is not a regular file")
    if info.st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST} is {info.st_size} bytes, more than {MAX_MANIFEST_BYTES}")
    return parse_manifest(path.read_bytes())


def _walk(root: Path) -> tuple[dict[str, int], set[str]]:
    """Regular files (path -> size) and folders under ``root``; links and special files are refused."""
    files: dict[str, int] = {}
    folders: set[str] = set()
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as listing:
            for item in listing:
                rel = f"{prefix}{item.name}"
                if item.is_symlink():
                    raise ManifestError(f"{rel!r} is a symbolic link; the manifest lists regular files only")
                if item.is_dir(follow_symlinks=False):
                    folders.add(rel)
                    pending.append((Path(item.path), rel + "/"))
                elif item.is_file(follow_symlinks=False):
                    files[rel] = item.stat(follow_symlinks=False).st_size
                else:
                    raise ManifestError(f"{rel!r} is not a regular file or folder")
    return files, folders


def verify_tree(root: Path, *, workers: int = 0) -> dict[str, Any]:
    """Check an extracted artifact against its manifest; return the manifest document.

    Every file under ``root`` must be listed, every listed file present with its size and sha256,
    and no folder, link or special file may be there that the files do not need. Sizes are compared
    before anything is hashed, so a mismatch is found without reading the weights.
    """
    root = Path(root)
    manifest = read_manifest(root / MANIFEST)
    sizes, folders = _walk(root)
    sizes.pop(MANIFEST, None)
    manifest.check_listing(sizes, folders)
    digests = digest_entries([Entry(path, source=root / path) for path in sizes],
                             workers=workers or os.cpu_count() or 1)
    for path, digest in sorted(digests.items()):
        manifest.check_digest(path, digest)
    return manifest.data
