"""The parallel gzip writer and the safe extractor, on hand-made streams and archives."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from lora_endpoint.contract.manifest import Entry
from lora_endpoint.packaging.archive import BLOCK, ParallelGzipWriter, safe_extract, write_tar_gz
from lora_endpoint.packaging.config import PackageError


def _payload(size: int) -> bytes:
    """Half random, half repetitive: both deflate paths, and matches across block boundaries."""
    rng = random.Random(7)
    noise = rng.randbytes(size // 2)
    return noise + (b"lora adapter weights " * (size // 40 + 1))[: size - len(noise)]


@pytest.mark.parametrize("size", [0, 1, BLOCK - 1, BLOCK, 3 * BLOCK + 12345])
def test_parallel_gzip_round_trips_through_gunzip(size: int) -> None:
    data = _payload(size)
    sink = io.BytesIO()
    writer = ParallelGzipWriter(sink, level=6, workers=2)
    for start in range(0, len(data), 300_001):  # odd write sizes straddle block boundaries
        writer.write(data[start : start + 300_001])
    writer.close()
    assert gzip.decompress(sink.getvalue()) == data


def test_parallel_gzip_output_does_not_depend_on_thread_count() -> None:
    data = _payload(5 * BLOCK)
    outputs = set()
    for workers in (1, 2, 5):
        sink = io.BytesIO()
        writer = ParallelGzipWriter(sink, level=6, workers=workers)
        writer.write(data)
        writer.close()
        outputs.add(sink.getvalue())
    assert len(outputs) == 1
    header = next(iter(outputs))[:10]
    assert header[4:8] == b"\0\0\0\0", "gzip header carries no timestamp"
    assert header[3] == 0, "gzip header carries no file name"


def test_tar_entries_are_sorted_manifest_first_with_fixed_metadata(tmp_path: Path) -> None:
    source = tmp_path / "weights.bin"
    source.write_bytes(b"x" * 1000)
    os.chmod(source, 0o600)
    entries = [Entry("b/z.txt", data=b"z"), Entry("a.txt", data=b"a"), Entry("b/a/w.bin", source=source),
               Entry("manifest.json", data=b"{}")]
    sizes = {"b/z.txt": 1, "a.txt": 1, "b/a/w.bin": 1000, "manifest.json": 2}
    archive = tmp_path / "t.tar.gz"
    with open(archive, "wb") as sink:
        write_tar_gz(entries, sizes, sink, workers=2)
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    # manifest.json first: an extractor knows every size and sha256 before anything else arrives
    assert [m.name for m in members] == ["manifest.json", "a.txt", "b", "b/a", "b/a/w.bin", "b/z.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in members} == {"manifest.json": 0o644, "a.txt": 0o644, "b": 0o755, "b/a": 0o755,
                                                 "b/a/w.bin": 0o644, "b/z.txt": 0o644}


def test_tar_refuses_a_file_that_changed_size(tmp_path: Path) -> None:
    source = tmp_path / "w.bin"
    source.write_bytes(b"12345")
    with open(tmp_path / "t.tar.gz", "wb") as sink, pytest.raises(PackageError, match="changed while"):
        write_tar_gz([Entry("w.bin", source=source)], {"w.bin": 4}, sink)


# --- the safe extractor: a corpus of hostile archives, each refused with its own message ----------


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


HOSTILE: dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]] = {
    "absolute": ([(_member("/etc/evil"), b"x")], "absolute path"),
    "dotdot": ([(_member("model/../../evil"), b"x")], r"climbs out"),
    "symlink": ([(_member("link", tarfile.SYMTYPE, "/etc/passwd"), None)], "is a link"),
    "hardlink": ([(_member("ok", tarfile.REGTYPE), b"x"), (_member("hard", tarfile.LNKTYPE, "ok"), None)],
                 "is a link"),
    "device": ([(_member("dev", tarfile.CHRTYPE), None)], "device or FIFO"),
    "fifo": ([(_member("pipe", tarfile.FIFOTYPE), None)], "device or FIFO"),
    "duplicate": ([(_member("a.txt"), b"1"), (_member("a.txt"), b"2")], "appears twice"),
    "windows-drive": ([(_member("C:/evil"), b"x")], "absolute path"),
    "sparse": ([(_member("holes", tarfile.GNUTYPE_SPARSE), b"x")], "sparse file"),
    "file-then-folder": ([(_member("a"), b"1"), (_member("a", tarfile.DIRTYPE), None)], "both a file and a folder"),
    "folder-then-file": ([(_member("a/b"), b"1"), (_member("a"), b"2")], "both a folder and a file"),
    "inside-a-file": ([(_member("a"), b"1"), (_member("a/b"), b"2")], "inside 'a', which is a file"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_safe_extract_refuses_hostile_archives_and_leaves_nothing(case: str, tmp_path: Path) -> None:
    members, message = HOSTILE[case]
    archive = _tar(tmp_path / f"{case}.tar.gz", members)
    dest = tmp_path / "dest"
    with pytest.raises(PackageError, match=message):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name], "no temporary leftovers"


def test_safe_extract_refuses_a_file_that_is_not_an_archive(tmp_path: Path) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(PackageError, match="not a readable tar archive"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_safe_extract_writes_plain_modes(tmp_path: Path) -> None:
    info = _member("bin/run.sh")
    info.mode = 0o4777  # setuid, world-writable: must not survive
    archive = _tar(tmp_path / "m.tar.gz", [(info, b"#!/bin/sh\n")])
    dest = safe_extract(archive, tmp_path / "dest")
    assert (dest / "bin" / "run.sh").read_bytes() == b"#!/bin/sh\n"
    assert (dest / "bin" / "run.sh").stat().st_mode & 0o7777 == 0o644


def test_safe_extract_refuses_a_non_empty_destination(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "m.tar.gz", [(_member("a"), b"1")])
    (tmp_path / "dest").mkdir()
    (tmp_path / "dest" / "keep").write_text("mine")
    with pytest.raises(PackageError, match="not an empty folder"):
        safe_extract(archive, tmp_path / "dest")
    assert (tmp_path / "dest" / "keep").read_text() == "mine"
