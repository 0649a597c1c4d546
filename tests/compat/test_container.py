"""The compat tier: a package built under transformers 5 loads and answers alike under transformers 4.x.

``make test-compat`` runs this in ``.venv-compat`` (transformers 4.x, peft 0.17) with ``LORA_BUILD_PYTHON``
naming the main venv's python (transformers 5), which builds the package from sources saved by
transformers 5 and records its answers (``tests/compat/probe.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.compat.probe import ROPE_THETA, ask, mismatches

pytestmark = pytest.mark.compat

BUILD_PYTHON = "LORA_BUILD_PYTHON"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``src/`` (as transformers 5 saved it), ``package/`` and ``expected.json``, made by the build python."""
    python = os.environ.get(BUILD_PYTHON)
    if not python:
        pytest.fail(f"set {BUILD_PYTHON} to a python with transformers 5 and this project (make test-compat does)")
    out = tmp_path_factory.mktemp("compat")
    proc = subprocess.run([python, "-m", "tests.compat.probe", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _expected(built: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((built / "expected.json").read_text())
    return data


def test_the_tier_crosses_major_versions(built: Path) -> None:
    import transformers

    assert _expected(built)["transformers"].split(".")[0] == "5", "the package must be built by transformers 5"
    assert transformers.__version__.split(".")[0] == "4", "the compat tier must run transformers 4.x"


def test_sources_as_transformers_5_saved_them_fail_here_and_the_package_does_not(built: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    # GIVEN the base exactly as transformers 5 wrote it: its tokenizer does not load, its RoPE is misread
    with pytest.raises(ValueError, match="TokenizersBackend"):
        AutoTokenizer.from_pretrained(str(built / "src" / "base"))
    assert AutoConfig.from_pretrained(str(built / "src" / "base")).rope_theta != ROPE_THETA
    # WHEN the same base is read from the package THEN both load as transformers 5 read them
    base = built / "package" / "base"
    config = AutoConfig.from_pretrained(str(base))
    assert config.rope_theta == ROPE_THETA and config.rope_scaling["rope_type"] == "llama3"
    assert type(AutoTokenizer.from_pretrained(str(base))).__name__ == "PreTrainedTokenizerFast"
    assert AutoTokenizer.from_pretrained(str(built / "package" / "adapters" / "chatty")).chat_template


def test_package_answers_here_as_it_did_under_transformers_5(built: Path) -> None:
    expected = _expected(built)["answers"]
    actual = ask(built / "package")["answers"]
    assert [a["status"] for a in actual] == [200] * len(expected)
    assert [m for e, a in zip(expected, actual, strict=True) for m in mismatches(e, a)] == []
