"""Adapter discovery and validation: every broken folder is refused with a message naming adapter and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from handler.adapters import AdapterError, discover_adapters, read_adapter, validate_adapter_name


def test_discovers_real_adapters(tiny_model_dir: Path) -> None:
    found = discover_adapters(tiny_model_dir / "adapters")
    assert list(found) == ["alpha", "beta"]
    assert found["alpha"].rank == 4 and found["alpha"].alpha == 8.0
    assert found["alpha"].target_modules == ("q_proj", "v_proj")
    assert discover_adapters(tiny_model_dir / "missing") == {}


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../up", "x" * 65, "base", "__base__", "sp ace"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(AdapterError):
        validate_adapter_name(name)


def _copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_model_dir / "adapters" / "alpha", tmp_path / "alpha"))


def _edit_config(folder: Path, **changes: object) -> None:
    path = folder / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("breakage", "needle"),
    [
        (lambda f: (f / "adapter_config.json").unlink(), "adapter_config.json is missing"),
        (lambda f: (f / "adapter_config.json").write_text("{oops"), "adapter_config.json is unreadable"),
        (lambda f: (f / "adapter_config.json").write_text("[]"), "must hold a JSON object"),
        (lambda f: (f / "adapter_model.safetensors").unlink(), "weights are missing"),
        (lambda f: (f / "adapter_model.safetensors").rename(f / "adapter_model.bin"), "only pickle weights"),
        (lambda f: _edit_config(f, peft_type="PREFIX_TUNING"), "field 'peft_type' must be LORA"),
        (lambda f: _edit_config(f, r=0), "field 'r' must be a positive integer"),
        (lambda f: _edit_config(f, lora_alpha=-1), "field 'lora_alpha'"),
        (lambda f: _edit_config(f, target_modules=[]), "field 'target_modules' is empty"),
        (lambda f: (f / "evil").symlink_to("/etc/passwd"), "is a symbolic link"),
    ],
)
def test_broken_adapters_are_refused_with_their_own_message(tiny_model_dir, tmp_path, breakage, needle) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    breakage(folder)
    with pytest.raises(AdapterError, match="adapter 'alpha'") as err:
        read_adapter("alpha", folder)
    assert needle in str(err.value)
