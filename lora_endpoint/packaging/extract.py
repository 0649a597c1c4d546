"""Safe, bounded extraction of ``model.tar.gz``, checked against its manifest while it streams.

Safety: only regular files and folders are written, and only inside ``dest``: absolute paths, ``..``,
links, devices, FIFOs, sparse files, duplicates and file/folder clashes are refused; files get mode
0o644 and folders 0o755 whatever the archive says. Members go to a temporary sibling of ``dest`` that
is renamed into place at the end, so on any failure (a refused member, a limit, a manifest mismatch,
Ctrl-C) nothing is left behind: not at ``dest``, not beside it.

Limits, enforced while the archive streams, before a member is written (never after it all):
- Ceilings: ``max_bytes`` of files and ``max_members`` (defaults and their reasons: ``limits``).
- When ``manifest.json`` comes before any other file (``lora-endpoint package build`` writes it first), it says
  exactly what may follow: every file must be listed, with that size, and is hashed as it is written.
  What it declares must fit under the ceilings and on the disk, so a bomb is refused before its first
  file, and the extraction can never write more than was declared.
- Without one (archives made by other tools, or by the packager before it wrote the manifest first),
  the ceilings are the caps; a ``manifest.json`` found further on is checked against everything
  written, before the rename.
- Between one member's data and the next, at most 64 KiB of headers: a pax header may claim any size,
  and tarfile would read it into memory whole.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import hashlib
import io
import lzma
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from lora_endpoint.contract.manifest import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    FileDigest,
    Manifest,
    ManifestError,
    parse_manifest,
    read_manifest,
)
from lora_endpoint.packaging.config import PackageError
from lora_endpoint.packaging.limits import (
    DEFAULT_MAX_MEMBERS,
    DEFAULT_MIN_BYTES,
    DEFAULT_RATIO,
    ArchiveLimitError,
    Limits,
    format_size,
)

COPY_BUFFER = 1 << 20
HEADER_BUDGET = 64 << 10


class UnsafeArchiveError(PackageError):
    """An archive member that could write outside the destination or is not a plain file/folder."""


class _BoundedStream(io.RawIOBase):
    """The decompressed tar stream, readable up to ``limit``; the extractor moves the limit on.

    Seekable forward only (tarfile skips member padding with a seek; it never goes back), so tarfile
    reads exactly what it needs: no read-ahead, and no copies of a stream-mode buffer.
    """

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.position = 0
        self.limit = HEADER_BUDGET

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        target = offset if whence == io.SEEK_SET else self.position + offset if whence == io.SEEK_CUR else -1
        if target < self.position:
            raise PackageError("not a readable tar archive (it needs a backward seek)")
        while self.position < target and self.read(min(target - self.position, COPY_BUFFER)):
            pass
        return self.position

    def allow(self, data_end: int) -> None:
        """Let reading go to ``data_end`` (the end of a member's data) and the next member's headers."""
        self.limit = data_end + HEADER_BUDGET

    def read(self, size: int | None = -1) -> bytes:
        left = self.limit - self.position
        if left <= 0:
            raise ArchiveLimitError(f"a tar header is larger than {format_size(HEADER_BUDGET)}; refused")
        size = left if size is None or size < 0 else min(size, left)
        try:
            data = self.raw.read(size)
        except (OSError, EOFError, zlib.error, lzma.LZMAError) as err:  # decompression, not our disk
            raise PackageError(f"not a readable tar archive ({err})") from None
        self.position += len(data)
        return data


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """The archive's bytes through gzip, bzip2 or xz (told by their magic numbers), or as they are."""
    magic = raw.read(6)
    raw.seek(0)
    # The callers' ``with`` closes what these return.
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    return raw


def _check_member(member: tarfile.TarInfo, files: dict[str, FileDigest], folders: set[str]) -> str:
    """The member's normalised relative path ("" for the root), or a refusal."""
    name = member.name
    path = PurePosixPath(name)
    if not name or name.startswith(("/", "\\")) or path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r} has an absolute path")
    if ".." in path.parts or "\\" in name:
        raise UnsafeArchiveError(f"archive member {name!r} climbs out of the destination ('..')")
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(f"archive member {name!r} is a link (to {member.linkname!r})")
    if member.isdev():
        raise UnsafeArchiveError(f"archive member {name!r} is a device or FIFO")
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r} is not a regular file or folder")
    if member.issparse():
        raise UnsafeArchiveError(f"archive member {name!r} is a sparse file")
    if member.size < 0:
        raise UnsafeArchiveError(f"archive member {name!r} has a negative size")
    rel = "/".join(path.parts)
    if member.isreg() and (rel in files or not rel):
        raise UnsafeArchiveError(f"archive member {name!r} appears twice")
    if rel in files:
        raise UnsafeArchiveError(f"archive member {name!r} is both a file and a folder")
    if member.isreg() and rel in folders:
        raise UnsafeArchiveError(f"archive member {name!r} is both a folder and a file")
    parents = ["/".join(path.parts[:i]) for i in range(1, len(path.parts))]
    inside = next((parent for parent in parents if parent in files), None)
    if inside is not None:
        raise UnsafeArchiveError(f"archive member {name!r} is inside {inside!r}, which is a file")
    return rel


def _copy(source: IO[bytes], out: Path) -> FileDigest:
    """Write ``source`` to a new file ``out``, hashing on the way (one pass, 1 MiB at a time)."""
    digest = hashlib.sha256()
    size = 0
    with source, open(out, "xb") as sink:
        while chunk := source.read(COPY_BUFFER):
            digest.update(chunk)
            sink.write(chunk)
            size += len(chunk)
    out.chmod(0o644)
    return FileDigest(size, digest.hexdigest())


@dataclass
class _Extraction:
    """One extraction's running state: what was written, against which caps and manifest."""

    staging: Path
    limits: Limits
    archive_size: int
    manifest: Manifest | None = None
    written: int = 0
    members: int = 0
    files: dict[str, FileDigest] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)

    @property
    def max_bytes(self) -> int:
        if self.limits.max_bytes is not None:
            return self.limits.max_bytes
        return max(DEFAULT_MIN_BYTES, DEFAULT_RATIO * self.archive_size)

    @property
    def max_members(self) -> int:
        return DEFAULT_MAX_MEMBERS if self.limits.max_members is None else self.limits.max_members

    def _too_many_bytes(self, what: str) -> ArchiveLimitError:
        cap = format_size(self.max_bytes)
        why = (f"--max-bytes {cap}" if self.limits.max_bytes is not None else
               f"{cap}, the cap for a {format_size(self.archive_size)} archive (16 times its size, at least 64 MiB)")
        return ArchiveLimitError(f"{what} would pass {why}; raise it with --max-bytes if you trust the archive")

    def _too_many_members(self, what: str) -> ArchiveLimitError:
        if self.manifest is not None:
            return ArchiveLimitError(f"{what}: more members than the files and folders {MANIFEST} lists")
        return ArchiveLimitError(f"{what} would pass {self.max_members} members; raise it with --max-members "
                                 "if you trust the archive")

    def run(self, tar: tarfile.TarFile, stream: _BoundedStream) -> None:
        for member in tar:
            self.members += 1
            if self.members > self.max_members:
                raise self._too_many_members(f"member {self.members} ({member.name!r})")
            rel = _check_member(member, self.files, self.folders)
            parts = rel.split("/") if rel else []
            self.folders.update("/".join(parts[:i]) for i in range(1, len(parts) + member.isdir()))
            out = self.staging.joinpath(*parts)
            if member.isdir():
                if self.manifest is not None and rel and rel not in self.manifest.folders:
                    raise ManifestError(f"folder {rel!r} is not needed by any file in {MANIFEST}")
                out.mkdir(mode=0o755, parents=True, exist_ok=True)
                stream.allow(member.offset_data)  # the next member's headers
                continue
            leading_manifest = rel == MANIFEST and not self.files
            if leading_manifest and member.size > MAX_MANIFEST_BYTES:
                raise ManifestError(f"{MANIFEST} is {member.size} bytes, more than {MAX_MANIFEST_BYTES}")
            if not leading_manifest and self.manifest is not None:
                self.manifest.check_member(rel, member.size)
            if not leading_manifest and self.written + member.size > self.max_bytes:
                raise self._too_many_bytes(f"{rel!r} ({format_size(member.size)})")
            out.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            stream.allow(member.offset_data + member.size)
            source = tar.extractfile(member)
            assert source is not None
            if leading_manifest:
                self._start_from_manifest(source, out)
                continue
            digest = _copy(source, out)
            if self.manifest is not None:
                self.manifest.check_digest(rel, digest)
            self.files[rel] = digest
            self.written += digest.size

    def _start_from_manifest(self, source: IO[bytes], out: Path) -> None:
        """A leading manifest: from here on it decides what may follow, and the caps."""
        raw = source.read()
        manifest = parse_manifest(raw)
        out.write_bytes(raw)
        out.chmod(0o644)
        self.files[MANIFEST] = FileDigest(len(raw), hashlib.sha256(raw).hexdigest())
        declared = manifest.total_bytes
        members = self.members + len(manifest.files) + len(manifest.folders) + 1  # +1: a "." entry
        if declared > self.max_bytes:
            raise self._too_many_bytes(f"the {format_size(declared)} that {MANIFEST} declares")
        if members > self.max_members:
            raise self._too_many_members(f"the files and folders that {MANIFEST} lists")
        free = shutil.disk_usage(self.staging).free
        if declared > free:
            raise OSError(errno.ENOSPC, f"{MANIFEST} declares {format_size(declared)}, "
                                        f"{format_size(free)} free under {self.staging.parent}")
        # From here on the manifest decides: each file must be listed with its size (check_member), so
        # the bytes written cannot pass what it declares; the members it implies are the exact cap.
        self.manifest = manifest
        self.limits = Limits(max_bytes=declared, max_members=members)

    def finish(self, require_manifest: bool) -> None:
        """Check the whole tree against the manifest (a late one is read from the staging folder)."""
        if self.manifest is None and MANIFEST in self.files:
            self.manifest = read_manifest(self.staging / MANIFEST)
        if self.manifest is None:
            if require_manifest:
                raise ManifestError(f"has no {MANIFEST}: nothing to check it against")
            return
        listed = {path: digest for path, digest in self.files.items() if path != MANIFEST}
        self.manifest.check_listing({path: digest.size for path, digest in listed.items()}, self.folders)
        for path, digest in sorted(listed.items()):
            self.manifest.check_digest(path, digest)


def safe_extract(
    archive: str | Path, dest: str | Path, *, limits: Limits | None = None, require_manifest: bool = False
) -> Path:
    """Extract a tar(.gz) into ``dest`` (new, or an empty folder) and return ``dest``.

    A ``manifest.json`` in the archive is always checked (see the module docstring); with
    ``require_manifest`` an archive without one is refused too. Errors are ``PackageError``s whose
    message starts with the archive's path; an ``OSError`` means the disk, not the archive.
    """
    source, target = Path(archive), Path(dest)
    limits = limits or Limits()
    if not source.is_file():
        raise PackageError(f"{source} does not exist or is not a file")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise PackageError(f"{target} exists and is not an empty folder")
    created = [folder for folder in target.absolute().parents if not folder.exists()]  # removed again on failure
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        work = _Extraction(staging, limits, source.stat().st_size)
        with open(source, "rb") as raw, _decompressed(raw) as plain:
            stream = _BoundedStream(plain)
            try:
                with tarfile.open(fileobj=stream, mode="r:") as tar:
                    work.run(tar, stream)
            except (tarfile.TarError, EOFError, zlib.error) as err:
                raise PackageError(f"not a readable tar archive ({err})") from None
        work.finish(require_manifest)
        if target.exists():
            target.rmdir()
        staging.rename(target)
    except BaseException as err:
        shutil.rmtree(staging, ignore_errors=True)
        for folder in created:  # innermost first; only if still empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, PackageError):
            raise type(err)(f"{source}: {err}") from None
        raise
    return target
