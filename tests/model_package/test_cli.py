"""The command line: --help documents every option, the README agrees with it, extract works."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from model_package import BuildOptions, build
from model_package.cli import main, parser

README = Path(__file__).resolve().parents[2] / "README.md"


def _build_parser() -> argparse.ArgumentParser:
    commands = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["build"]


def _build_flags() -> set[str]:
    build_parser = _build_parser()
    return {flag for action in build_parser._actions for flag in action.option_strings if flag.startswith("--")}


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
    text = README.read_text()
    section = text.split("<!-- section:package -->", 1)[1].split("<!-- section:", 1)[0]
    mentioned = set(re.findall(r"(--[a-z][a-z0-9-]+)", section))
    flags = _build_flags() - {"--help"}
    assert mentioned - flags == set(), "README names options the CLI does not have"
    assert flags - mentioned == set(), "README leaves options out"


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
