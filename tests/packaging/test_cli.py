"""The command line: --help documents every option, the README agrees with it, extract works."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from lora_endpoint.packaging import BuildOptions, build
from lora_endpoint.packaging.cli import main, parser
from tests.docs import doc
from tests.packaging.archives import gzip_bomb, manifest_for, mutated_manifests, package_tar, write_tar


def _build_parser(command: str = "build") -> argparse.ArgumentParser:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[command]


def _flags(command: str) -> set[str]:
    return {flag for action in _build_parser(command)._actions for flag in action.option_strings
            if flag.startswith("--")}


def test_help_explains_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in _build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help"
    for flag in ("--adapter", "--base-model", "--merge", "--output", "--format", "--dtype", "--batch-size",
                 "--max-batch-delay", "--max-new-tokens", "--tensor-parallel-degree", "--upload", "--kms-key-id",
                 "--convert-pickle"):
        assert flag in text


def test_readme_package_section_matches_the_parser() -> None:
    section = doc("packaging")
    mentioned = set(re.findall(r"(--[a-z][a-z0-9-]+)", section))
    flags = (_flags("build") | _flags("extract")) - {"--help"}
    assert mentioned - flags == set(), "docs/packaging.md names options the CLI does not have"
    assert flags - mentioned == set(), "docs/packaging.md leaves options out"


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["build", "--base-model", "x", "--upload", "http://not-s3"])
    assert exit_info.value.code == 2
    assert "s3://bucket/prefix" in capsys.readouterr().err


def test_extract_command_checks_the_manifest(
    options_for: Callable[..., BuildOptions], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = build(options_for())
    assert main(["extract", str(result.path), str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.strip().endswith("model")
    assert (tmp_path / "model" / "serving.properties").is_file()


def _extract_refused(archive: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Run ``extract`` expecting a refusal: exit 2, one line on stderr, nothing left beside the archive."""
    before = sorted(archive.parent.iterdir())
    assert main(["extract", str(archive), str(archive.parent / "dest"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(archive.parent.iterdir()) == before, "nothing left behind"
    return err


def test_extract_refuses_a_gzip_bomb_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = gzip_bomb(tmp_path / "bomb.tar.gz", size=1 << 30)
    assert "--max-bytes" in _extract_refused(bomb, capsys)


def test_extract_refuses_a_changed_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = package_tar(tmp_path / "m.tar.gz", {"model.py": b"evil = True\n"},
                          manifest=manifest_for({"model.py": b"good = True\n"}))
    assert "sha256 differs" in _extract_refused(archive, capsys)


def test_extract_refuses_an_archive_without_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    archive = write_tar(tmp_path / "m.tar.gz", [("model.py", b"x = 1\n")])
    assert "has no manifest.json" in _extract_refused(archive, capsys)


def test_extract_refuses_bad_limits_as_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for flag, value in (("--max-bytes", "lots"), ("--max-bytes", "0"), ("--max-members", "-3")):
        with pytest.raises(SystemExit) as exit_info:
            main(["extract", "a.tar.gz", str(tmp_path / "d"), flag, value])
        assert exit_info.value.code == 2
        assert "expected a" in capsys.readouterr().err


def test_extract_of_fuzzed_manifests_is_exit_0_or_2_never_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = {"model.py": b"x", "lora_endpoint/handler/entry.py": b"y", "adapters/a/w.bin": b"z"}
    codes = []
    for index, manifest in enumerate(mutated_manifests(80, seed=11)):
        archive = package_tar(tmp_path / f"{index}.tar.gz", files, manifest=manifest, first=index % 2 == 0)
        dest = tmp_path / f"dest-{index}"
        codes.append(main(["extract", str(archive), str(dest)]))
        err = capsys.readouterr().err
        assert codes[-1] in (0, 2) and "Traceback" not in err, err
        assert codes[-1] == 0 or not dest.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [], "no staging folders left"
    assert codes.count(2) > 40, codes
