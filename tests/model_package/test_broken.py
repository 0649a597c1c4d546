"""A corpus of broken inputs: each refused with its own message, nothing left at the output path."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from handler.adapters import AdapterError
from model_package import BuildOptions, PackageError, build
from model_package.cli import main


class Payload:
    """A pickle that runs code when loaded: here it would create the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.marker), "w"))


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _add_tensor(folder: Path, name: str, shape: tuple[int, ...]) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    tensors[name] = torch.zeros(shape)
    save_file(tensors, path, metadata={"format": "pt"})


def missing_config(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_config.json").unlink()


def unreadable_config(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_config.json").write_text("{not json")


def missing_weights(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_model.safetensors").unlink()


def pickle_weights(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_model.safetensors").rename(a / "adapter_model.bin")


def pickle_with_code(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_model.safetensors").unlink()
    (a / "adapter_model.bin").write_bytes(pickle.dumps({"w": Payload(a.parent / "pwned")}, protocol=2))
    opts["convert_pickle"] = True
    opts["marker"] = a.parent / "pwned"


def unsafe_name(a: Path, opts: dict[str, Any]) -> None:
    opts["adapters"] = (("../evil", a),)


def colliding_names(a: Path, opts: dict[str, Any]) -> None:
    opts["adapters"] = (("alpha", a), ("ALPHA", a))


def other_base(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, base_model_name_or_path="meta-llama/Llama-3.1-70B")


def unknown_target_module(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, target_modules=["q_proj", "c_attn"])


def rank_too_high(a: Path, opts: dict[str, Any]) -> None:
    opts["max_lora_rank"] = 2


def modules_to_save(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, modules_to_save=["lm_head"])


def vocab_mismatch(a: Path, opts: dict[str, Any]) -> None:
    _add_tensor(a, "base_model.model.lm_head.weight", (500, 32))
    opts["allow_modules_to_save"] = True


def symlink_inside(a: Path, opts: dict[str, Any]) -> None:
    os.symlink("/etc/hostname", a / "notes.txt")


def no_lora_tensors(a: Path, opts: dict[str, Any]) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"something.weight": torch.zeros(2, 2)}, a / "adapter_model.safetensors")


def corrupt_safetensors(a: Path, opts: dict[str, Any]) -> None:
    (a / "adapter_model.safetensors").write_bytes(b"\xff" * 64)


def not_lora(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, peft_type="PREFIX_TUNING")


def merge_two(a: Path, opts: dict[str, Any]) -> None:
    opts["adapters"] = (("alpha", a), ("beta", a.parent.parent / "beta-src"))
    shutil.copytree(a, a.parent.parent / "beta-src")
    opts["merge"] = True


def missing_base(a: Path, opts: dict[str, Any]) -> None:
    opts["base_model"] = "./no/such/base"


CORPUS: dict[str, tuple[Callable[[Path, dict[str, Any]], None], str]] = {
    "missing-config": (missing_config, r"adapter_config.json is missing"),
    "unreadable-config": (unreadable_config, r"adapter_config.json is unreadable"),
    "missing-weights": (missing_weights, r"weights are missing"),
    "pickle-weights": (pickle_weights, r"only pickle weights .* --convert-pickle"),
    "pickle-with-code": (pickle_with_code, r"cannot be loaded as plain tensors"),
    "unsafe-name": (unsafe_name, r"'\.\./evil' is not a safe identifier"),
    "colliding-names": (colliding_names, r"'ALPHA': name collides with 'alpha'"),
    "other-base": (other_base, r"field 'base_model_name_or_path' .* contradicts --base-model"),
    "unknown-target-module": (unknown_target_module, r"field 'target_modules' .* does not have: c_attn"),
    "rank-too-high": (rank_too_high, r"field 'r' gives rank 4, above --max-lora-rank 2"),
    "modules-to-save": (modules_to_save, r"field 'modules_to_save' lists \['lm_head'\]"),
    "vocab-mismatch": (vocab_mismatch, r"lm_head.weight has 500 vocabulary rows .* vocab_size is 38\d"),
    "symlink-inside": (symlink_inside, r"notes.txt is a symbolic link"),
    "no-lora-tensors": (no_lora_tensors, r"holds no LoRA tensors"),
    "corrupt-safetensors": (corrupt_safetensors, r"not a readable safetensors file"),
    "not-lora": (not_lora, r"field 'peft_type' must be LORA"),
    "merge-two": (merge_two, r"--merge bakes exactly one adapter"),
    "missing-base": (missing_base, r"no such folder"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_broken_input_is_refused_with_its_own_message(
    case: str, adapter_copy: Callable[[str], Path], tiny_src: Path, tmp_path: Path
) -> None:
    # GIVEN a copy of a good adapter, broken in one way
    breaker, message = CORPUS[case]
    folder = adapter_copy("alpha")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    opts: dict[str, Any] = {"base_model": str(tiny_src / "base"), "output": out_dir / "model.tar.gz",
                            "adapters": (("alpha", folder),), "progress": False}
    breaker(folder, opts)
    marker = opts.pop("marker", None)
    # WHEN it is built THEN it is refused with that problem's message, and nothing is written
    with pytest.raises((PackageError, AdapterError), match=message):
        build(BuildOptions(**opts))
    assert list(out_dir.iterdir()) == []
    assert marker is None or not marker.exists(), "the pickle's code never ran"


def test_every_corpus_message_is_distinct() -> None:
    assert len(CORPUS) >= 10
    assert len({message for _, message in CORPUS.values()}) == len(CORPUS)


def test_cli_reports_bad_input_in_one_line_with_exit_code_2(
    adapter_copy: Callable[[str], Path], tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = adapter_copy("alpha")
    (folder / "adapter_model.safetensors").unlink()
    output = tmp_path / "out" / "model.tar.gz"
    code = main(["build", "--base-model", str(tiny_src / "base"), "--adapter", f"alpha={folder}",
                 "--output", str(output), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().count("\n") == 0
    assert captured.err.startswith("error: adapter 'alpha': weights are missing")
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not output.exists()
    assert not output.parent.exists() or list(output.parent.iterdir()) == []
