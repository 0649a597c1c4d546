"""The extractor's caps (bytes, members, headers) and its manifest check while the archive streams.

Every refusal must leave the folder the archive sits in exactly as it was: no dest, no staging folder.
"""

from __future__ import annotations

import errno
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.manifest import ManifestError
from lora_endpoint.packaging import extract
from lora_endpoint.packaging.config import PackageError
from lora_endpoint.packaging.extract import safe_extract
from lora_endpoint.packaging.limits import ArchiveLimitError, Limits
from tests.packaging.archives import gzip_bomb, manifest_for, package_tar, write_tar

MIB = 1 << 20
FILES = {"model.py": b"print('hello')\n", "lora_endpoint/handler/entry.py": b"def handle(inputs): ...\n",
         "adapters/alpha/adapter_config.json": b'{"r": 8}'}


def _only(folder: Path, *names: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names), "something was left behind"


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Default caps of 1 MiB (at least) and 20 members, so the tests need no big archives."""
    monkeypatch.setattr(extract, "DEFAULT_MIN_BYTES", MIB)
    monkeypatch.setattr(extract, "DEFAULT_MAX_MEMBERS", 20)


# --- gzip bombs and other floods: refused while streaming, nothing left ----------------------------


def test_a_one_mib_gzip_bomb_of_one_gib_is_refused_at_its_header(tmp_path: Path) -> None:
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", size=1 << 30)
    assert bomb.stat().st_size < 2 * MIB
    with pytest.raises(ArchiveLimitError, match=r"1\.0 GiB.*would pass 64\.0 MiB.*--max-bytes"):
        safe_extract(bomb, tmp_path / "dest")
    _only(tmp_path, "bomb.tar.gz")


def test_a_bomb_of_many_files_is_cut_off_at_the_cap(tmp_path: Path, small_caps: None) -> None:
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", size=8 * MIB, files=8)
    with pytest.raises(ArchiveLimitError, match=r"zeros-00001.bin"):
        safe_extract(bomb, tmp_path / "dest")
    _only(tmp_path, "bomb.tar.gz")


def test_a_bomb_behind_an_honest_manifest_is_refused_before_its_first_file(tmp_path: Path) -> None:
    manifest = json.dumps({"manifest_format": 1, "files": [
        {"path": "zeros-00000.bin", "size": 1 << 30, "sha256": "0" * 64}]}).encode()
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", size=1 << 30, manifest=manifest)
    with pytest.raises(ArchiveLimitError, match=r"1\.0 GiB that manifest.json declares would pass 64\.0 MiB"):
        safe_extract(bomb, tmp_path / "dest")
    _only(tmp_path, "bomb.tar.gz")


def test_max_bytes_raises_the_cap(tmp_path: Path, small_caps: None) -> None:
    archive = write_tar(tmp_path / "big.tar.gz", [("weights.bin", bytes(2 * MIB))])
    with pytest.raises(ArchiveLimitError, match=r"would pass 1.0 MiB"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "big.tar.gz")
    dest = safe_extract(archive, tmp_path / "dest", limits=Limits(max_bytes=3 * MIB))
    assert (dest / "weights.bin").stat().st_size == 2 * MIB


def test_max_bytes_also_bounds_what_a_manifest_may_declare(tmp_path: Path) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", {"weights.bin": bytes(1000)})
    with pytest.raises(ArchiveLimitError, match="--max-bytes 999 bytes"):
        safe_extract(archive, tmp_path / "dest", limits=Limits(max_bytes=999))
    _only(tmp_path, "m.tar.gz")


def test_too_many_members_are_refused_and_max_members_raises_the_cap(tmp_path: Path, small_caps: None) -> None:
    archive = write_tar(tmp_path / "many.tar.gz", [(f"f{i}", b"") for i in range(25)])
    with pytest.raises(ArchiveLimitError, match=r"would pass 20 members.*--max-members"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "many.tar.gz")
    assert len(list(safe_extract(archive, tmp_path / "dest", limits=Limits(max_members=25)).iterdir())) == 25


def test_a_manifest_listing_more_members_than_the_cap_is_refused_before_extracting(
    tmp_path: Path, small_caps: None
) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", {f"f{i}": b"x" for i in range(25)})
    with pytest.raises(ArchiveLimitError, match=r"files and folders that manifest.json lists would pass 20"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")


def test_a_huge_pax_header_is_refused_without_reading_it(tmp_path: Path) -> None:
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("a.txt")
        info.pax_headers = {"comment": "x" * (4 * MIB)}
        info.size = 1
        tar.addfile(info, io.BytesIO(b"1"))
    with pytest.raises(ArchiveLimitError, match=r"tar header is larger than 64.0 KiB"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "pax.tar.gz")


def test_many_folders_in_a_row_are_not_mistaken_for_a_huge_header(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "folders.tar.gz", [*((f"d{i:03d}", None) for i in range(300)), ("a.txt", b"1")])
    dest = safe_extract(archive, tmp_path / "dest")
    assert len(list(dest.iterdir())) == 301


def test_a_declared_size_beyond_the_free_space_is_refused_up_front(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", FILES)
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10})())
    with pytest.raises(OSError) as caught:
        safe_extract(archive, tmp_path / "dest")
    assert caught.value.errno == errno.ENOSPC and "10 bytes free" in str(caught.value)
    _only(tmp_path, "m.tar.gz")


# --- the manifest, checked while the archive streams ------------------------------------------------


def test_a_package_with_its_manifest_first_extracts_verified(tmp_path: Path) -> None:
    dest = safe_extract(package_tar(tmp_path / "m.tar.gz", FILES), tmp_path / "dest", require_manifest=True)
    assert {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()} == {
        **FILES, "manifest.json": manifest_for(FILES)}


TAMPERED: dict[str, tuple[Callable[[dict[str, bytes]], Any], str]] = {
    "changed-content": (lambda f: f.update({"model.py": b"print('HELLO')\n"}), "sha256 differs"),
    "changed-size": (lambda f: f.update({"model.py": b"import os; os.system('x')\n"}), "bytes, manifest.json says"),
    "extra-file": (lambda f: f.update({"evil.py": b"x"}), "'evil.py'.* not listed"),
    "missing-file": (lambda f: f.pop("lora_endpoint/handler/entry.py"),
                     "1 file .*'lora_endpoint/handler/entry.py'.* missing"),
}


@pytest.mark.parametrize("first", [True, False], ids=["manifest-first", "manifest-last"])
@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_package_changed_after_its_manifest_is_refused(case: str, first: bool, tmp_path: Path) -> None:
    change, message = TAMPERED[case]
    files = dict(FILES)
    change(files)
    archive = package_tar(tmp_path / "m.tar.gz", files, manifest=manifest_for(FILES), first=first)
    with pytest.raises(ManifestError, match=message):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")


def test_a_folder_no_listed_file_needs_is_refused(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "m.tar.gz", [("manifest.json", manifest_for(FILES)), ("adapters/evil", None),
                                                *FILES.items()])
    with pytest.raises(ManifestError, match="'adapters/evil' is not needed"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")


def test_folders_made_for_dest_are_removed_again_on_failure(tmp_path: Path) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", {"model.py": b"evil\n"},
                          manifest=manifest_for({"model.py": b"good\n"}))
    with pytest.raises(ManifestError):
        safe_extract(archive, tmp_path / "new" / "deeper" / "dest")
    _only(tmp_path, "m.tar.gz")


def test_require_manifest_refuses_an_archive_without_one(tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "m.tar.gz", list(FILES.items()))
    with pytest.raises(ManifestError, match=r"has no manifest.json"):
        safe_extract(archive, tmp_path / "dest", require_manifest=True)
    _only(tmp_path, "m.tar.gz")
    assert (safe_extract(archive, tmp_path / "dest") / "model.py").is_file(), "allowed when not required"


@pytest.mark.parametrize("manifest", [b"[]", b"{not json", json.dumps({"manifest_format": 1}).encode()])
@pytest.mark.parametrize("first", [True, False], ids=["manifest-first", "manifest-last"])
def test_a_malformed_manifest_is_a_clear_refusal(manifest: bytes, first: bool, tmp_path: Path) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", FILES, manifest=manifest, first=first)
    with pytest.raises(ManifestError, match=r"manifest\.json"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")


# --- interrupted, or not an archive at all -------------------------------------------------------------


def test_ctrl_c_mid_extraction_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = extract._copy
    calls: list[str] = []

    def interrupted(source: Any, out: Path) -> Any:
        calls.append(out.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return copy(source, out)

    monkeypatch.setattr(extract, "_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        safe_extract(package_tar(tmp_path / "m.tar.gz", FILES), tmp_path / "dest")
    assert len(calls) == 2, "one file was written before the interrupt"
    _only(tmp_path, "m.tar.gz")


@pytest.mark.parametrize("content", [b"", b"\x1f\x8b" + b"junk" * 50, b"BZhjunk", b"plain text, not a tar" * 40])
def test_unreadable_archives_are_a_clear_refusal(content: bytes, tmp_path: Path) -> None:
    archive = tmp_path / "m.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(PackageError, match="not a readable tar archive"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")


def test_a_truncated_package_is_refused(tmp_path: Path) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", {**FILES, "weights.bin": bytes(range(256)) * 400})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(PackageError, match="not a readable tar archive"):
        safe_extract(archive, tmp_path / "dest")
    _only(tmp_path, "m.tar.gz")
