"""Base module shapes read from safetensors headers (one file or shards) agree with the loaded model's."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lora_endpoint.handler.adapter_weights import module_weight_shapes
from lora_endpoint.handler.adapters import AdapterError
from lora_endpoint.packaging import BuildOptions, build
from lora_endpoint.packaging.base import read_base_model


@pytest.fixture(scope="module")
def sharded_base(tiny_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny base saved again in several shards with a ``model.safetensors.index.json``."""
    from transformers import AutoModelForCausalLM

    out = tmp_path_factory.mktemp("sharded") / "base"
    model = AutoModelForCausalLM.from_pretrained(tiny_src / "base")
    model.save_pretrained(out, safe_serialization=True, max_shard_size="20KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_src / "base" / name, out / name)
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 2
    return out


def test_header_shapes_match_the_loaded_model_for_every_weighted_module(tiny_src: Path, sharded_base: Path) -> None:
    from transformers import AutoModelForCausalLM

    # GIVEN what the handler reads from the loaded model
    loaded = module_weight_shapes(AutoModelForCausalLM.from_pretrained(tiny_src / "base"))
    # WHEN the packager reads the headers of one file, and of the shards listed by an index
    single = read_base_model(tiny_src / "base").module_shapes
    sharded = read_base_model(sharded_base).module_shapes
    # THEN both give every module the loaded model's shape, in the same orientation
    assert single == sharded
    assert set(single) == set(loaded)
    assert all(tuple(single[name]) == loaded[name] for name in single)


def test_a_sharded_base_refuses_an_adapter_for_another_hidden_size(
    sharded_base: Path, adapter_copy: Callable[[str], Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    # GIVEN alpha with its q_proj factors widened to a hidden size of 64
    folder = adapter_copy("alpha")
    tensors = load_file(folder / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"
    tensors[key] = tensors[key].repeat(1, 2)
    save_file(tensors, folder / "adapter_model.safetensors")
    # WHEN it is built against the sharded base THEN the tensor is named with the shape the shards give
    options = BuildOptions(base_model=str(sharded_base), output=tmp_path / "model.tar.gz",
                           adapters=(("alpha", folder),), progress=False, allow_base_mismatch=True)
    with pytest.raises(AdapterError, match=rf"tensor {key} has shape \[4, 64\], expected \[4, 32\]"):
        build(options)
