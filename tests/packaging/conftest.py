"""Shared fixtures: one tiny model dir (base + two real peft adapters) per test session."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.packaging import BuildOptions


@pytest.fixture(scope="session")
def tiny_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/`` (tiny Llama + tokenizer) and ``adapters/alpha``, ``adapters/beta`` written by peft."""
    from scripts.tiny_model import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("tiny-src"), adapters=("alpha", "beta"))


@pytest.fixture
def adapter_copy(tiny_src: Path, tmp_path: Path) -> Callable[[str], Path]:
    """A fresh, writable copy of the ``alpha`` adapter under ``tmp_path/<name>``."""

    def copy(name: str = "alpha") -> Path:
        dest = tmp_path / "inputs" / name
        shutil.copytree(tiny_src / "adapters" / "alpha", dest)
        return dest

    return copy


@pytest.fixture
def options_for(tiny_src: Path, tmp_path: Path) -> Callable[..., BuildOptions]:
    """``BuildOptions`` over the tiny base and adapters, writing into ``tmp_path/out``."""

    def make(**overrides: Any) -> BuildOptions:
        values: dict[str, Any] = {
            "base_model": str(tiny_src / "base"),
            "output": tmp_path / "out" / "model.tar.gz",
            "adapters": (("alpha", tiny_src / "adapters" / "alpha"), ("beta", tiny_src / "adapters" / "beta")),
            "progress": False,
        }
        values.update(overrides)
        return BuildOptions(**values)

    return make


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and region, so boto3 never looks for real ones."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
