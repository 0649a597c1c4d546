"""Adapter discovery and validation: every broken folder is refused with a message naming adapter and field."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lora_endpoint.handler.adapter_weights import check_adapter_weights, module_weight_shapes
from lora_endpoint.handler.adapters import (
    AdapterError,
    check_unmerged,
    discover_adapters,
    read_adapter,
    validate_adapter_name,
)


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


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"lora_alpha": float("nan")}, "field 'lora_alpha' must be a finite number, got nan"),
        ({"lora_dropout": float("-inf")}, "field 'lora_dropout' must be a finite number, got -inf"),
        ({"loftq_config": {"scales": [1.0, float("inf")]}}, "field 'loftq_config.scales.1' must be a finite number"),
        ({"alpha_pattern": {"q_proj": 0}}, "field 'alpha_pattern' must map module names to positive numbers"),
        ({"rank_pattern": {"(q_proj": 8}}, "field 'rank_pattern' key '(q_proj' is not a valid regex"),
        ({"lora_alpha": 10**400}, "field 'lora_alpha' must be a positive number"),
        ({"use_bdlora": {"nblocks": 2}}, "field 'use_bdlora' makes it a BD-LoRA adapter"),
        ({"init_lora_weights": "mica"}, "field 'init_lora_weights' makes it a MiCA adapter"),
    ],
)
def test_config_numbers_must_be_finite_and_variants_are_refused(tiny_model_dir, tmp_path, changes, needle) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(AdapterError, match="adapter 'alpha'") as err:
        read_adapter("alpha", folder)
    assert needle in str(err.value)


def test_a_config_nested_too_deep_is_unreadable_not_a_crash(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    (folder / "adapter_config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AdapterError, match=r"adapter_config\.json is unreadable"):
        read_adapter("alpha", folder)


def test_dora_is_read_but_refused_unless_merged(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    _edit_config(folder, use_dora=True)
    info = read_adapter("alpha", folder)  # readable: merged, DoRA serves exactly
    assert info.use_dora
    with pytest.raises(AdapterError, match=r"field 'use_dora' is true: .*peft refuses DoRA in adapter_names"):
        check_unmerged(info)
    check_unmerged(read_adapter("alpha", tiny_model_dir / "adapters" / "alpha"))


def test_rank_for_matches_module_paths_as_peft_does(tiny_model_dir, tmp_path) -> None:
    folder = _copy(tiny_model_dir, tmp_path)
    _edit_config(folder, rank_pattern={"v_proj": 2, r"model\.layers\.1\.self_attn\.q_proj": 8})
    info = read_adapter("alpha", folder)
    assert info.rank_for("model.layers.0.self_attn.v_proj") == 2
    assert info.rank_for("model.layers.1.self_attn.q_proj") == 8
    assert info.rank_for("model.layers.0.self_attn.q_proj") == 4  # no key matches: r
    assert info.rank_for("model.layers.0.self_attn.xv_proj") == 4  # a key matches whole path parts only


def test_discovery_can_collect_failures_instead_of_raising(tiny_model_dir, tmp_path) -> None:
    root = tmp_path / "adapters"
    shutil.copytree(tiny_model_dir / "adapters" / "alpha", root / "good")
    shutil.copytree(tiny_model_dir / "adapters" / "alpha", root / "bad")
    _edit_config(root / "bad", r=0)
    with pytest.raises(AdapterError, match="adapter 'bad'"):
        discover_adapters(root)
    failures: dict[str, Exception] = {}
    assert list(discover_adapters(root, failures=failures)) == ["good"]
    assert list(failures) == ["bad"] and "field 'r'" in str(failures["bad"])


def test_weights_check_reads_shapes_from_the_loaded_model(loaded, tiny_model_dir) -> None:
    # GIVEN the shapes the handler reads from the loaded model's modules (peft layers report their base's)
    shapes = module_weight_shapes(loaded.model.get_base_model())
    assert shapes["model.layers.0.self_attn.v_proj"] == (16, 32)  # (out_features, in_features)
    assert shapes["model.embed_tokens"] == (len(loaded.tokenizer), 32)
    # WHEN a good adapter is checked against them THEN it passes; against another base's THEN it is named
    info = read_adapter("alpha", tiny_model_dir / "adapters" / "alpha")
    check_adapter_weights(info, shapes)
    wider = {name: tuple(2 * n for n in shape) for name, shape in shapes.items()}
    with pytest.raises(AdapterError, match=r"lora_A.weight has shape \[4, 32\], expected \[4, 64\]"):
        check_adapter_weights(info, wider)


@pytest.mark.parametrize(
    ("tensor", "refused"),
    [
        ("nan-in-last-chunk", True),
        ("bfloat16-inf", True),
        ("float8-nan", True),
        ("scalar-nan", True),
        ("integers", False),
        ("finite-bfloat16", False),
    ],
)
def test_every_value_of_every_floating_tensor_is_scanned(
    tiny_model_dir, tmp_path, monkeypatch, tensor, refused
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    import lora_endpoint.handler.adapter_weights

    monkeypatch.setattr(lora_endpoint.handler.adapter_weights, "SCAN_CHUNK", 8)  # 2 rows of 4 per read: many chunks
    last_row_nan = torch.zeros(9, 4)
    last_row_nan[8, 3] = float("nan")
    extra = {
        "nan-in-last-chunk": last_row_nan,
        "bfloat16-inf": torch.tensor([[1.0, float("inf")]], dtype=torch.bfloat16),
        "float8-nan": torch.full((3,), float("nan")).to(torch.float8_e5m2),
        "scalar-nan": torch.tensor(float("nan")),
        "integers": torch.arange(12).view(3, 4),
        "finite-bfloat16": torch.ones(5, 2, dtype=torch.bfloat16),
    }[tensor]
    folder = _copy(tiny_model_dir, tmp_path)
    tensors = load_file(folder / "adapter_model.safetensors")
    tensors["base_model.model.extra.tensor"] = extra
    save_file(tensors, folder / "adapter_model.safetensors")
    info = read_adapter("alpha", folder)
    if refused:
        with pytest.raises(AdapterError, match=r"tensor base_model\.model\.extra\.tensor holds non-finite values"):
            check_adapter_weights(info)
    else:
        check_adapter_weights(info)


def test_conv1d_bases_and_fan_in_fan_out_are_sized_as_peft_sizes_them(loaded, tiny_model_dir, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from lora_endpoint.handler.adapter_weights import tensor_shapes

    # GIVEN a GPT-2 base (transformers' Conv1D stores weights as in x out) and a real adapter for it
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32)).save_pretrained(
        tmp_path / "gpt2")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    config = LoraConfig(r=4, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    get_peft_model(model, config).save_pretrained(tmp_path / "conv1d")
    headers = {name.removesuffix(".weight"): shape
               for name, shape in tensor_shapes(tmp_path / "gpt2" / "model.safetensors").items()}
    from_modules = module_weight_shapes(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"))
    info = read_adapter("conv1d", tmp_path / "conv1d")
    # WHEN it is checked against the header shapes (build) and the loaded modules (serve) THEN it passes
    for shapes in (headers, from_modules):
        check_adapter_weights(info, shapes)
        with pytest.raises(AdapterError, match=r"c_attn.lora_A.weight has shape \[4, 32\], expected \[4, 64\]"):
            check_adapter_weights(info, {name: tuple(2 * n for n in shape) for name, shape in shapes.items()})
    # AND a Llama adapter whose config says fan_in_fan_out (peft turns it off for nn.Linear) still passes
    folder = _copy(tiny_model_dir, tmp_path)
    _edit_config(folder, fan_in_fan_out=True)
    check_adapter_weights(read_adapter("alpha", folder), module_weight_shapes(loaded.model.get_base_model()))
