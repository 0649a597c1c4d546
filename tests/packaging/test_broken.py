"""A corpus of broken inputs: each refused with its own message, nothing left at the output path."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.handler.adapters import AdapterError
from lora_endpoint.packaging import BuildOptions, PackageError, build
from lora_endpoint.packaging.cli import main


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

    _edit_tensors(folder, lambda tensors: tensors.__setitem__(name, torch.zeros(shape)))


def _edit_tensors(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def _replace_with(source: Path) -> Callable[[Path, dict[str, Any]], None]:
    """A breaker that swaps the adapter's weights (and config) for those of another real adapter."""

    def breaker(a: Path, opts: dict[str, Any]) -> None:
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(source / name, a / name)
        _edit_config(a, base_model_name_or_path=None)

    return breaker


def _poison(tensor: str, value: float) -> Callable[[Path, dict[str, Any]], None]:
    def breaker(a: Path, opts: dict[str, Any]) -> None:
        _edit_tensors(a, lambda tensors: tensors[tensor].view(-1).__setitem__(3, value))

    return breaker


Q0 = "base_model.model.model.layers.0.self_attn.q_proj"
V1 = "base_model.model.model.layers.1.self_attn.v_proj"


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


def rank_mismatch(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, r=16, lora_alpha=32)  # the weights are rank 4


def rank_pattern_mismatch(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, rank_pattern={"v_proj": 2})


def nan_alpha(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, lora_alpha=float("nan"))  # json writes NaN, and json.loads reads it back


def infinite_alpha(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, lora_alpha=float("inf"))


def nan_alpha_pattern(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, alpha_pattern={"q_proj": float("nan")})


def huge_alpha(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, lora_alpha=10**400)


def overlong_number(a: Path, opts: dict[str, Any]) -> None:
    config = (a / "adapter_config.json").read_text()
    (a / "adapter_config.json").write_text(config.replace('"r": 4', '"r": ' + "4" * 5000))


def missing_lora_b(a: Path, opts: dict[str, Any]) -> None:
    _edit_tensors(a, lambda tensors: tensors.pop(f"{V1}.lora_B.weight"))


def dora(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, use_dora=True)


def dora_magnitude_without_dora(a: Path, opts: dict[str, Any]) -> None:
    _add_tensor(a, f"{Q0}.lora_magnitude_vector", (32,))


def target_parameters(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, target_parameters=["mlp.experts.gate_up_proj"])


def layer_replication(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, layer_replication=[[0, 2], [1, 2]])


def qalora(a: Path, opts: dict[str, Any]) -> None:
    _edit_config(a, use_qalora=True)


def full_copy_mismatch(a: Path, opts: dict[str, Any]) -> None:
    _add_tensor(a, "base_model.model.model.norm.weight", (64,))
    opts["allow_modules_to_save"] = True


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
    "rank-mismatch": (rank_mismatch, rf"tensor {Q0}.lora_A.weight has shape \[4, 32\], expected \[16, 32\] \(r=16"),
    "rank-pattern-mismatch": (rank_pattern_mismatch, r"v_proj.lora_A.weight .* \(rank_pattern gives .* rank 2"),
    "nan-alpha": (nan_alpha, r"field 'lora_alpha' must be a finite number, got nan"),
    "infinite-alpha": (infinite_alpha, r"field 'lora_alpha' must be a finite number, got inf"),
    "nan-alpha-pattern": (nan_alpha_pattern, r"field 'alpha_pattern.q_proj' must be a finite number"),
    "huge-alpha": (huge_alpha, r"field 'lora_alpha' must be a positive number, got 1000"),
    "overlong-number": (overlong_number, r"adapter_config.json is unreadable: .*digits"),
    "nan-weights": (_poison(f"{Q0}.lora_A.weight", float("nan")), rf"tensor {Q0}.lora_A.weight holds non-finite"),
    "infinite-weights": (_poison(f"{V1}.lora_B.weight", float("-inf")), rf"tensor {V1}.lora_B.weight holds non-fin"),
    "missing-lora-b": (missing_lora_b, r"module .*layers.1.self_attn.v_proj has lora_A but no lora_B"),
    "dora": (dora, r"field 'use_dora' is true: DoRA adapters cannot share a batch .* --merge"),
    "dora-magnitude": (dora_magnitude_without_dora, r"lora_magnitude_vector is a DoRA magnitude vector but"),
    "target-parameters": (target_parameters, r"field 'target_parameters' is set: peft cannot route"),
    "layer-replication": (layer_replication, r"field 'layer_replication' is set: .* rewrites the base"),
    "qalora": (qalora, r"field 'use_qalora' makes it a QALoRA adapter"),
    "full-copy-mismatch": (full_copy_mismatch, r"model.norm.weight has shape \[64\] but base module model.norm"),
}
# Filled in by the ``other_hidden`` fixture: an adapter peft trained for a base of hidden size 64.
OTHER_HIDDEN = "other-hidden-size"


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


# The kinds the weights check and the stricter config check added: each must also be one line, exit 2.
WEIGHT_AND_CONFIG_KINDS = sorted(set(CORPUS) - {
    "missing-config", "unreadable-config", "missing-weights", "pickle-weights", "pickle-with-code", "unsafe-name",
    "colliding-names", "other-base", "unknown-target-module", "rank-too-high", "modules-to-save", "vocab-mismatch",
    "symlink-inside", "no-lora-tensors", "corrupt-safetensors", "not-lora", "merge-two", "missing-base",
})


def _cli_build(opts: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["build", "--base-model", opts["base_model"], "--output", str(opts["output"]), "--no-progress"]
    argv += [arg for name, path in opts["adapters"] for arg in ("--adapter", f"{name}={path}")]
    argv += ["--allow-modules-to-save"] if opts.get("allow_modules_to_save") else []
    argv += ["--merge"] if opts.get("merge") else []
    code = main(argv)
    captured = capsys.readouterr()
    assert captured.out == "" or code == 0
    return code, captured.err


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real peft adapters no edit of ``alpha`` can make: one for a base of hidden size 64, one DoRA."""
    from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("foreign")
    wide = build_tiny_model(root / "wide-base", TinyModelConfig(hidden_size=64, intermediate_size=128))
    return {
        "wide": build_lora_adapter(wide, root / "wide", seed=7),
        "dora": build_lora_adapter(root / "wide-base", root / "dora-wide", seed=8, use_dora=True),
    }


@pytest.fixture(scope="module")
def dora_src(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real DoRA adapter (with magnitude vectors) for the tiny base."""
    from scripts.tiny_model import build_lora_adapter

    return build_lora_adapter(tiny_src / "base", tmp_path_factory.mktemp("dora") / "dora", seed=9, use_dora=True)


@pytest.mark.parametrize("case", WEIGHT_AND_CONFIG_KINDS)
def test_cli_refuses_each_weight_and_config_kind_in_one_line_with_exit_code_2(
    case: str, adapter_copy: Callable[[str], Path], tiny_src: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    breaker, message = CORPUS[case]
    folder = adapter_copy("alpha")
    opts: dict[str, Any] = {"base_model": str(tiny_src / "base"), "output": tmp_path / "out" / "model.tar.gz",
                            "adapters": (("alpha", folder),)}
    breaker(folder, opts)
    code, err = _cli_build(opts, capsys)
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: adapter 'alpha': ")
    assert re.search(message, err)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_weights_for_another_hidden_size_are_refused_naming_tensor_and_shapes(
    foreign: dict[str, Path], adapter_copy: Callable[[str], Path], tiny_src: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN a real adapter peft trained on a base of hidden size 64, under the name of one for our base (32)
    folder = adapter_copy("alpha")
    _replace_with(foreign["wide"])(folder, {})
    opts = {"base_model": str(tiny_src / "base"), "output": tmp_path / "model.tar.gz", "adapters": (("alpha", folder),)}
    # WHEN it is built THEN the first mismatching tensor is named with its shape and the base's
    code, err = _cli_build(opts, capsys)
    assert code == 2 and err.strip().count("\n") == 0
    assert err.startswith(
        f"error: adapter 'alpha': tensor {Q0}.lora_A.weight has shape [4, 64], expected [4, 32] (r=4; base module "
        "model.layers.0.self_attn.q_proj has in_features 32, out_features 32)"
    )
    assert not (tmp_path / "model.tar.gz").exists()


def test_a_real_dora_adapter_is_refused_unmerged_and_packaged_merged(
    dora_src: Path, tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    opts: dict[str, Any] = {"base_model": str(tiny_src / "base"), "output": tmp_path / "a" / "model.tar.gz",
                            "adapters": (("dora", dora_src),)}
    code, err = _cli_build(opts, capsys)
    assert code == 2 and "error: adapter 'dora': field 'use_dora' is true" in err
    # --merge bakes DoRA into the base exactly (peft merge_and_unload), so nothing needs routing per row
    opts.update(output=tmp_path / "b" / "model.tar.gz", merge=True)
    code, err = _cli_build(opts, capsys)
    assert code == 0, err
    assert (tmp_path / "b" / "model.tar.gz").is_file()


def test_a_dora_adapter_for_another_base_is_refused_by_shape_even_when_merging(
    foreign: dict[str, Path], tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dora = Path(shutil.copytree(foreign["dora"], tmp_path / "dora"))
    _edit_config(dora, base_model_name_or_path=None)
    opts = {"base_model": str(tiny_src / "base"), "output": tmp_path / "model.tar.gz", "adapters": (("d", dora),),
            "merge": True}
    code, err = _cli_build(opts, capsys)
    assert code == 2
    assert re.search(r"error: adapter 'd': tensor .*lora_A.weight has shape \[4, 64\], expected \[4, 32\]", err)


def test_no_message_repeats_torchs_advice_to_load_with_weights_only_false(
    adapter_copy: Callable[[str], Path], tiny_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN pickles torch refuses for three reasons: a code-running global, garbage, an empty file
    contents = {"code": None, "garbage": b"not a pickle at all", "empty": b""}
    errors = {}
    for label, content in contents.items():
        folder = adapter_copy(label)
        (folder / "adapter_model.safetensors").unlink()
        if content is None:
            content = pickle.dumps({"w": Payload(tmp_path / "pwned")}, protocol=2)
        (folder / "adapter_model.bin").write_bytes(content)
        # WHEN each is converted THEN the message gives torch's cause, not its advice
        code = main(["build", "--base-model", str(tiny_src / "base"), "--adapter", f"{label}={folder}",
                     "--output", str(tmp_path / label / "model.tar.gz"), "--convert-pickle", "--no-progress"])
        errors[label] = err = capsys.readouterr().err
        assert code == 2 and err.strip().count("\n") == 0, err
        assert f"error: adapter '{label}': adapter_model.bin cannot be loaded as plain tensors: " in err
        for advice in ("weights_only=False", "`False`", "safe_globals", "\x1b["):
            assert advice not in err, err
    assert errors["code"].rstrip().endswith("Unsupported global: GLOBAL io.open was not an allowed global by default")
    assert not (tmp_path / "pwned").exists()
