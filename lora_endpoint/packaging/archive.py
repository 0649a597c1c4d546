"""Deterministic ``model.tar.gz`` writing (parallel gzip, flat memory); the extractor is ``extract``.

Order: ``manifest.json`` first, so an extractor knows every file's size and sha256 before anything
else arrives (``lora_endpoint.packaging.extract`` bounds and checks the rest with it), then folder-first by path.
Determinism: entries in that order, every header with mtime 0, uid/gid 0, no user/group names,
mode 0o644 (files) / 0o755 (folders), and a gzip header without timestamp or file name. The gzip
stream is cut into fixed 1 MiB blocks compressed on a thread pool (the pigz scheme: each block primed
with the 32 KiB before it and ended by a sync flush), so the output depends on the input bytes and
the level only, never on thread timing, and it is one ordinary gzip member any gunzip reads.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import tarfile
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from lora_endpoint.contract.manifest import MANIFEST, Entry, parent_folders
from lora_endpoint.packaging.config import PackageError
from lora_endpoint.packaging.extract import UnsafeArchiveError, safe_extract

__all__ = ["ParallelGzipWriter", "UnsafeArchiveError", "safe_extract", "sort_key", "write_tar_gz"]

BLOCK = 1 << 20
WINDOW = 32 * 1024
COPY_BUFFER = 1 << 20


def _deflate(data: bytes, zdict: bytes, level: int, final: bool) -> bytes:
    compressor = (
        zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
        if zdict
        else zlib.compressobj(level, zlib.DEFLATED, -15)
    )
    return compressor.compress(data) + compressor.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


class ParallelGzipWriter(io.RawIOBase):
    """A write-only gzip stream compressed in fixed blocks on ``workers`` threads.

    At most ``2 * workers`` blocks are in flight, so memory stays flat whatever is written.
    ``tell()`` reports uncompressed bytes written (what ``tarfile`` needs).
    """

    def __init__(self, raw: BinaryIO, *, level: int = 1, workers: int = 0) -> None:
        super().__init__()
        self._raw = raw
        self._level = level
        self._workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self._workers)
        self._pending: deque[Future[bytes]] = deque()
        self._buffer = bytearray()
        self._tail = b""
        self._crc = 0
        self._size = 0
        xfl = b"\x02" if level == 9 else b"\x04" if level == 1 else b"\x00"
        raw.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + xfl + b"\xff")

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._size + len(self._buffer)

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._buffer += data
        while len(self._buffer) >= BLOCK:
            block = bytes(self._buffer[:BLOCK])
            del self._buffer[:BLOCK]
            self._submit(block, final=False)
        return len(data)

    def _submit(self, block: bytes, *, final: bool) -> None:
        self._pending.append(self._pool.submit(_deflate, block, self._tail, self._level, final))
        self._tail = block[-WINDOW:]
        self._crc = zlib.crc32(block, self._crc)
        self._size += len(block)
        while len(self._pending) > 2 * self._workers:
            self._raw.write(self._pending.popleft().result())

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._submit(bytes(self._buffer), final=True)
            self._buffer.clear()
            while self._pending:
                self._raw.write(self._pending.popleft().result())
            self._raw.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            super().close()


class _HashingFile(io.RawIOBase):
    """Pass-through writer that hashes (and counts) what goes to ``raw``."""

    def __init__(self, raw: BinaryIO) -> None:
        super().__init__()
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.sha256.update(data)
        return self.raw.write(data)


class _ProgressFile(io.RawIOBase):
    """Reads from ``raw``, reporting each chunk's length to ``on_bytes``."""

    def __init__(self, raw: BinaryIO, on_bytes: Callable[[int], object] | None) -> None:
        super().__init__()
        self.raw = raw
        self.on_bytes = on_bytes

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        if self.on_bytes is not None and data:
            self.on_bytes(len(data))
        return data


def sort_key(arcname: str) -> tuple[bool, tuple[str, ...]]:
    """``manifest.json`` first, then folder-first order: a folder's entries follow it directly."""
    return arcname != MANIFEST, tuple(arcname.split("/"))


def _info(name: str, *, size: int = 0, folder: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if folder else tarfile.REGTYPE
    info.mode = 0o755 if folder else 0o644
    info.size = size
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def write_tar_gz(
    entries: list[Entry],
    sizes: dict[str, int],
    dest: BinaryIO,
    *,
    level: int = 1,
    workers: int = 0,
    on_bytes: Callable[[int], object] | None = None,
) -> str:
    """Write ``entries`` as a deterministic tar.gz to ``dest``; return the archive's sha256.

    ``sizes`` are the sizes recorded in the manifest: a file that changed since is an error.
    """
    hashing = _HashingFile(dest)
    gz = ParallelGzipWriter(hashing, level=level, workers=workers)  # type: ignore[arg-type]
    by_name = {entry.arcname: entry for entry in entries}
    try:
        with tarfile.TarFile(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT, copybufsize=COPY_BUFFER) as tar:
            for name in sorted(set(by_name) | parent_folders(by_name), key=sort_key):
                entry = by_name.get(name)
                if entry is None:
                    tar.addfile(_info(name, folder=True))
                elif entry.data is not None:
                    tar.addfile(_info(name, size=len(entry.data)), io.BytesIO(entry.data))
                else:
                    assert entry.source is not None
                    with open(entry.source, "rb") as handle:
                        if os.fstat(handle.fileno()).st_size != sizes[name]:
                            raise PackageError(f"{entry.source} changed while it was being packaged")
                        reader = _ProgressFile(handle, on_bytes)
                        tar.addfile(_info(name, size=sizes[name]), reader)
    finally:
        gz.close()
    return hashing.sha256.hexdigest()
