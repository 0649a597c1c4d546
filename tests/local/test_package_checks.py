"""serve_local checks a package before any of its code runs, and a failed start leaves nothing behind."""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.commands.serve import main
from lora_endpoint.local.package import PackageError, ServedModel, resolve
from lora_endpoint.packaging import BuildOptions, build, extract
from lora_endpoint.packaging.limits import Limits
from tests.packaging.archives import gzip_bomb, mutated_manifests, package_tar, write_tar

from .conftest import write_manifest
from .test_lifecycle import write_package

EVIL = "open({marker!r}, 'w').write('ran')\n"


def _tamper(model_py: Path, marker: Path) -> None:
    """Append code that leaves ``marker`` behind the moment model.py is imported."""
    model_py.write_text(model_py.read_text() + EVIL.format(marker=str(marker)))


def _tar_of(folder: Path, archive: Path, *, manifest_first: bool = True) -> Path:
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "manifest.json"}
    return package_tar(archive, files, manifest=(folder / "manifest.json").read_bytes(), first=manifest_first)


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temp dir that resolve() extracts into (its ``lora-local-*`` folders), empty to start with."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def test_a_package_dir_whose_model_py_changed_is_refused_and_never_runs(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "pkg")
    marker = tmp_path / "ran"
    _tamper(pkg / "model.py", marker)
    with pytest.raises(PackageError, match=r"does not match its manifest.json.*'model.py'"):
        ServedModel.from_spec(resolve(pkg))
    assert not marker.exists(), "the changed model.py ran"


@pytest.mark.parametrize("manifest_first", [True, False], ids=["manifest-first", "manifest-last"])
def test_an_archive_whose_model_py_changed_is_refused_and_leaves_nothing(
    manifest_first: bool, tmp_path: Path, temp_root: Path
) -> None:
    pkg = write_package(tmp_path / "pkg")
    marker = tmp_path / "ran"
    _tamper(pkg / "model.py", marker)
    archive = _tar_of(pkg, tmp_path / "model.tar.gz", manifest_first=manifest_first)
    with pytest.raises(PackageError, match=r"'model.py'"):
        ServedModel.from_spec(resolve(archive))
    assert not marker.exists(), "the changed model.py ran"
    assert list(temp_root.iterdir()) == [], "no lora-local-* folder left"


def test_a_built_package_serves_as_archive_and_as_dir_and_stays_verifiable(
    tiny_model_dir: Path, tmp_path: Path, temp_root: Path
) -> None:
    # GIVEN a package built by lora-package, and the same package extracted to a dir
    result = build(BuildOptions(base_model=str(tiny_model_dir / "base"), output=tmp_path / "model.tar.gz",
                                adapters=(("alpha", tiny_model_dir / "adapters" / "alpha"),), progress=False))
    from_archive = resolve(result.path)
    assert from_archive.entry_file is not None and from_archive.temp_dir is not None
    extracted = extract.safe_extract(result.path, tmp_path / "pkg")
    # WHEN the dir is resolved and its model.py loaded, twice
    for _ in range(2):
        spec = resolve(extracted)
        assert spec.entry_file == (extracted / "model.py").resolve()
        ServedModel.from_spec(spec)
    # THEN loading wrote nothing into it (a __pycache__ would fail the next check)
    assert not list(extracted.rglob("__pycache__"))


def test_code_without_a_manifest_is_refused_unless_allowed(tmp_path: Path, temp_root: Path) -> None:
    pkg = write_package(tmp_path / "pkg")
    (pkg / "manifest.json").unlink()
    marker = tmp_path / "ran"
    _tamper(pkg / "model.py", marker)
    archive = write_tar(tmp_path / "model.tar.gz", [(p.name, p.read_bytes()) for p in sorted(pkg.iterdir())])
    for package in (pkg, archive):
        with pytest.raises(PackageError, match=r"no manifest.json.*--allow-no-manifest"):
            ServedModel.from_spec(resolve(package))
        assert not marker.exists()
        assert list(temp_root.iterdir()) == []
    spec = resolve(pkg, allow_no_manifest=True)
    ServedModel.from_spec(spec)
    assert marker.exists(), "trusted on request"


def test_an_entry_point_outside_the_package_is_refused(tmp_path: Path) -> None:
    pkg = write_package(tmp_path / "pkg")
    marker = tmp_path / "ran"
    (tmp_path / "outside.py").write_text(EVIL.format(marker=str(marker)))
    (pkg / "serving.properties").write_text("engine=Python\noption.entryPoint=../outside.py\n")
    write_manifest(pkg)
    with pytest.raises(PackageError, match="outside"):
        ServedModel.from_spec(resolve(pkg))
    assert not marker.exists()


def test_a_plain_model_dir_without_manifest_or_code_is_served_as_it_is(tmp_path: Path, temp_root: Path) -> None:
    archive = write_tar(tmp_path / "plain.tar.gz", [("base/config.json", b'{"model_type": "llama"}')])
    spec = resolve(archive)
    assert spec.entry_file is None and (spec.model_dir / "base" / "config.json").is_file()


# --- failures: nothing left in the temp dir ---------------------------------------------------------------


def _failing_archives(root: Path) -> dict[str, Path]:
    return {
        "bomb": gzip_bomb(root / "bomb.tar.gz", size=1 << 30),
        "link": _link_archive(root / "link.tar.gz"),
        "list-manifest": package_tar(root / "list.tar.gz", {"model.py": b"x = 1\n"}, manifest=b"[]"),
        "not-an-archive": _write(root / "junk.tar.gz", b"\x1f\x8b junk"),
    }


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _link_archive(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("model.py")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    return path


@pytest.mark.parametrize("case", ["bomb", "link", "list-manifest", "not-an-archive"])
def test_serve_local_refuses_a_bad_archive_with_exit_2_and_leaves_nothing(
    case: str, tmp_path: Path, temp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _failing_archives(tmp_path)[case]
    assert main([str(archive)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert list(temp_root.iterdir()) == []


def test_serve_local_passes_its_limits_on(tmp_path: Path, temp_root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = write_package(tmp_path / "pkg")
    archive = _tar_of(pkg, tmp_path / "model.tar.gz")
    assert main([str(archive), "--max-bytes", "10"]) == 2
    assert "--max-bytes 10 bytes" in capsys.readouterr().err
    with pytest.raises(PackageError, match="would pass 1 members"):
        resolve(archive, limits=Limits(max_members=1))
    assert list(temp_root.iterdir()) == []


def test_serve_local_fuzzed_manifests_never_crash(tmp_path: Path, temp_root: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    pkg = write_package(tmp_path / "pkg")
    files = {p.name: p.read_bytes() for p in pkg.iterdir() if p.name != "manifest.json"}
    for index, manifest in enumerate(mutated_manifests(30, seed=12)):
        archive = package_tar(tmp_path / f"{index}.tar.gz", files, manifest=manifest, first=index % 2 == 0)
        assert main([str(archive)]) == 2, "a manifest that does not match these files never serves"
        assert "Traceback" not in capsys.readouterr().err
    assert list(temp_root.iterdir()) == []


def test_ctrl_c_while_extracting_leaves_nothing(
    tmp_path: Path, temp_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = _tar_of(write_package(tmp_path / "pkg"), tmp_path / "model.tar.gz")

    def interrupted(source: Any, out: Path) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr(extract, "_copy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve(archive)
    assert list(temp_root.iterdir()) == []
    assert main([str(archive)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(temp_root.iterdir()) == []


SYNC_HANDLE = "def handle(inputs):\n    return None\n"
ASYNC_HANDLE = "async def handle(inputs):\n    return None\n"


def _mode_package(root: Path, properties: str, model_py: str) -> Path:
    root.mkdir(parents=True)
    (root / "model.py").write_text(model_py)
    (root / "serving.properties").write_text("engine=Python\noption.entryPoint=model.py\n" + properties)
    return write_manifest(root)


@pytest.mark.parametrize(("properties", "model_py", "mode"), [
    ("option.async_mode=true\n", ASYNC_HANDLE, "async"),
    ("option.async_mode=TRUE\n", ASYNC_HANDLE, "async"),  # DJL's Boolean.parseBoolean ignores case
    ("option.async_mode=false\n", SYNC_HANDLE, "sync"),
    ("", SYNC_HANDLE, "sync"),  # DJL's default
    ("option.async_mode=yes\n", SYNC_HANDLE, "sync"),  # anything but "true" is false
])
def test_serving_properties_pick_the_djl_mode(tmp_path: Path, properties: str, model_py: str, mode: str) -> None:
    served = ServedModel.from_spec(resolve(_mode_package(tmp_path / "pkg", properties, model_py)))
    assert served.mode == mode


@pytest.mark.parametrize(("properties", "model_py", "match"), [
    ("option.async_mode=true\n", SYNC_HANDLE, "is not an async function"),
    ("", ASYNC_HANDLE, "Invalid output type: coroutine"),
    ("option.async_mode=true\nbatch_size=4\n", ASYNC_HANDLE, "batch_size=4 with option.async_mode=true"),
])
def test_a_package_whose_handle_or_batching_does_not_fit_its_mode_is_refused_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], properties: str, model_py: str, match: str
) -> None:
    pkg = _mode_package(tmp_path / "pkg", properties, model_py)
    with pytest.raises(PackageError, match=match):
        ServedModel.from_spec(resolve(pkg))
    assert main([str(pkg)]) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1


def test_serve_local_refuses_batching_flags_in_async_mode_and_djl_mode_for_a_package(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tiny_model_dir), "--batch-size", "4"]) == 2  # a plain model dir: async unless told
    assert "add --djl-mode sync" in capsys.readouterr().err
    pkg = _mode_package(tmp_path / "pkg", "option.async_mode=false\n", SYNC_HANDLE)
    assert main([str(pkg), "--djl-mode", "async"]) == 2
    assert "option.async_mode decides" in capsys.readouterr().err
