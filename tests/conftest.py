"""Session fixtures: a tiny Llama with a tokenizer made in code and two real peft adapters."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# The djl_python compatibility module the local endpoint uses outside the LMI image.
STANDIN = Path(__file__).resolve().parent.parent / "lora_endpoint" / "local" / "djl_compat"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/`` + ``adapters/alpha`` + ``adapters/beta``, built once per session (a few seconds)."""
    from scripts.tiny_model import build_model_dir

    return build_model_dir(tmp_path_factory.mktemp("model") / "pkg", adapters=("alpha", "beta"))


@pytest.fixture(scope="session")
def loaded(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    """The tiny model dir loaded by the real loader, default settings (CPU, float32)."""
    from lora_endpoint.contract.settings import HandlerSettings
    from lora_endpoint.handler.loading import load_model

    return load_model(tiny_model_dir, HandlerSettings.from_env({}))


@pytest.fixture
def djl() -> Iterator[object]:
    """Make ``import djl_python`` resolve to the stand-in for the duration of a test."""
    sys.path.insert(0, str(STANDIN))
    try:
        import djl_python

        yield djl_python
    finally:
        sys.path.remove(str(STANDIN))
        for name in [m for m in sys.modules if m == "djl_python" or m.startswith("djl_python.")]:
            del sys.modules[name]
