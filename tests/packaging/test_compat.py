"""What transformers 5 writes, normalised so that 4.x reads it alike; built packages carry the normalised copies.

The loading side on transformers 4.x is the compat tier (tests/compat, ``make test-compat``); here the
rewrites themselves, and that the installed transformers (5.x) still reads the result exactly as before.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.manifest import verify_tree
from lora_endpoint.packaging import BuildOptions, PackageError, build, safe_extract
from lora_endpoint.packaging.compat import (
    NEWER_LORA_DEFAULTS,
    normalise_adapter_config,
    normalise_config,
    normalise_tokenizer_config,
    normalised_bytes,
    pending,
)

LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}


def _pending(folder: Path) -> list[str]:
    return pending(folder, owner="test")


def _tree_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``base/`` (llama3 RoPE) and ``alpha/`` (with its own tokenizer) exactly as transformers 5 / peft saved them."""
    from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model, build_tokenizer

    root = tmp_path_factory.mktemp("raw")
    base = build_tiny_model(root / "base", TinyModelConfig(rope_theta=500000.0, rope_scaling=LLAMA3), portable=False)
    alpha = build_lora_adapter(base, root / "alpha", seed=1, scale=4.0, portable=False)
    build_tokenizer().save_pretrained(alpha)
    return root


def test_tokenizers_backend_becomes_the_fast_class_4x_knows() -> None:
    config = {"tokenizer_class": "TokenizersBackend", "backend": "tokenizers", "eos_token": "</s>",
              "extra_special_tokens": ["<|user|>"]}
    assert normalise_tokenizer_config(config, chat_template="{{ x }}") == {
        "tokenizer_class": "PreTrainedTokenizerFast", "backend": "tokenizers", "eos_token": "</s>",
        "additional_special_tokens": ["<|user|>"], "chat_template": "{{ x }}"}
    # named extra tokens (4.x's dict form), specific classes and an inline template are left as they are
    kept = {"tokenizer_class": "LlamaTokenizer", "extra_special_tokens": {"image_token": "<img>"}, "chat_template": "a"}
    assert normalise_tokenizer_config(kept, chat_template="b") == kept


def test_rope_parameters_get_the_spelling_4x_reads() -> None:
    config = {"model_type": "llama", "dtype": "bfloat16", "rope_parameters": {**LLAMA3, "rope_theta": 500000.0}}
    out = normalise_config(config)
    assert out["rope_parameters"] == config["rope_parameters"]
    assert (out["rope_theta"], out["rope_scaling"], out["torch_dtype"]) == (500000.0, LLAMA3, "bfloat16")
    # plain RoPE: 4.x's "no rope_scaling"; a factor 5.x moved into rope_parameters comes back out
    rope = {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}
    plain = normalise_config({"rope_parameters": rope})
    assert (plain["rope_theta"], plain["partial_rotary_factor"], plain.get("rope_scaling")) == (1e6, 0.5, None)
    # a language model inside a composite config gets the same; per-layer-type RoPE is left alone
    nested = {"text_config": {"rope_parameters": {"rope_type": "default", "rope_theta": 7.0}}}
    assert normalise_config(nested)["text_config"]["rope_theta"] == 7.0
    per_layer = {"rope_parameters": {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}}
    assert normalise_config(per_layer) == per_layer
    # what the file already spells the 4.x way wins
    legacy = {"rope_theta": 3.0, "torch_dtype": "float16", "dtype": "bfloat16", "rope_parameters": {"rope_theta": 9.0}}
    assert normalise_config(legacy) == legacy


def test_adapter_config_drops_only_newer_peft_keys_that_are_off() -> None:
    base = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}
    written = {**base, **NEWER_LORA_DEFAULTS, "peft_version": "0.21.2", "qalora_group_size": 16}
    assert normalise_adapter_config(written) == base
    live = {**base, "lora_bias": True, "use_qalora": True, "qalora_group_size": 32}
    assert normalise_adapter_config(live) == live  # needs a newer peft: refused at load, not served wrong
    other = {"peft_type": "IA3", "peft_version": "0.21.2"}
    assert normalise_adapter_config(other) == other


def test_files_already_portable_keep_their_bytes_and_bad_json_is_a_package_error(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "rope_theta": 10000.0}')
    (tmp_path / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (tmp_path / "generation_config.json").write_text("not even json")  # not a file we rewrite
    assert _pending(tmp_path) == []
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    with pytest.raises(PackageError, match=r"^adapter 'x': adapter_config.json must hold a JSON object$"):
        normalised_bytes(tmp_path, "adapter_config.json", owner="adapter 'x'")
    (tmp_path / "chat_template.jinja").write_bytes(b"\xff\xfe{{ x }}")
    with pytest.raises(PackageError, match=r"^base model: chat_template.jinja is unreadable"):
        normalised_bytes(tmp_path, "tokenizer_config.json", owner="base model")


def test_build_bundles_normalised_copies_and_leaves_the_sources_alone(raw_src: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    # GIVEN a base and an adapter as transformers 5 saved them
    before = _tree_hashes(raw_src)
    raw_tokenizer = json.loads((raw_src / "base" / "tokenizer_config.json").read_text())
    assert raw_tokenizer["tokenizer_class"] == "TokenizersBackend"
    # WHEN they are built into a package
    options = BuildOptions(base_model=str(raw_src / "base"), adapters=(("alpha", raw_src / "alpha"),),
                           output=tmp_path / "pkg", format="dir", progress=False)
    result = build(options)
    package = result.path
    # THEN the package's copies need nothing more, its tokenizers load, and the sources are unchanged
    for folder in (package / "base", package / "adapters" / "alpha"):
        assert _pending(folder) == []
        assert "TokenizersBackend" not in (folder / "tokenizer_config.json").read_text()
        assert AutoTokenizer.from_pretrained(folder)("Hello world").input_ids
    assert "peft_version" not in json.loads((package / "adapters" / "alpha" / "adapter_config.json").read_text())
    assert _tree_hashes(raw_src) == before
    # AND the manifest hashes what was bundled
    verify_tree(package)
    listed = {f["path"]: f["sha256"] for f in result.manifest["files"]}
    assert listed["base/config.json"] == hashlib.sha256((package / "base" / "config.json").read_bytes()).hexdigest()
    assert listed["base/config.json"] != before["base/config.json"]


def _fingerprint(folder: Path) -> dict[str, Any]:
    """How the installed transformers reads a base: config RoPE, tokenizer behaviour, logits."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([[1, 5, 9, 42, 7] * 30])).logits[0, -1].tolist()
    return {
        "rope": AutoConfig.from_pretrained(folder).rope_parameters,
        "ids": tokenizer("Hello <|user|> world</s>").input_ids,
        "special": tokenizer.all_special_tokens,
        "chat": tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False),
        "logits": logits,
    }


def test_transformers_5_reads_the_normalised_base_exactly_as_the_original(raw_src: Path, tmp_path: Path) -> None:
    options = BuildOptions(base_model=str(raw_src / "base"), adapters=(("alpha", raw_src / "alpha"),),
                           output=tmp_path / "model.tar.gz", progress=False)
    package = safe_extract(build(options).path, tmp_path / "x")
    assert _fingerprint(package / "base") == _fingerprint(raw_src / "base")


def test_merge_writes_a_normalised_base(raw_src: Path, tmp_path: Path) -> None:
    from lora_endpoint.packaging.convert import merge_adapter

    assert _pending(merge_adapter(raw_src / "base", raw_src / "alpha", tmp_path / "merged")) == []
    options = BuildOptions(base_model=str(raw_src / "base"), adapters=(("alpha", raw_src / "alpha"),), merge=True,
                           output=tmp_path / "model.tar.gz", progress=False)
    base = safe_extract(build(options).path, tmp_path / "x") / "base"
    config = json.loads((base / "config.json").read_text())
    assert (config["rope_theta"], config["rope_scaling"]["rope_type"]) == (500000.0, "llama3")
    assert _pending(base) == []


def test_tiny_models_are_written_normalised(tiny_src: Path) -> None:
    assert _pending(tiny_src / "base") == []
    assert _pending(tiny_src / "adapters" / "alpha") == []


def test_a_malformed_tokenizer_config_is_exit_2_in_one_line(
    raw_src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from lora_endpoint.packaging.cli import main

    base = shutil.copytree(raw_src / "base", tmp_path / "base")
    (base / "tokenizer_config.json").write_text('{"tokenizer_class": ')
    code = main(["build", "--base-model", str(base), "--output", str(tmp_path / "out" / "model.tar.gz"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: base model: tokenizer_config.json is unreadable") and err.count("\n") == 1
    assert not (tmp_path / "out" / "model.tar.gz").exists()
