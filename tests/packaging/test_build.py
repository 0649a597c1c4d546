"""Builds from the tiny model: layout, manifest, determinism, --format dir, remote bases, --merge."""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from lora_endpoint.contract.manifest import verify_tree
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.packaging import BuildOptions, build, safe_extract
from lora_endpoint.packaging.config import PackageError


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _properties(path: Path) -> dict[str, str]:
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return dict(line.split("=", 1) for line in lines)


def _imported_names(path: Path) -> dict[str, list[str]]:
    """``module -> names`` for every ``from X import ...`` in a file."""
    tree = ast.parse(path.read_text())
    imports = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return {node.module or "": [alias.name for alias in node.names] for node in imports}


def test_two_builds_are_byte_identical_and_a_changed_byte_changes_the_hash(
    options_for: Callable[..., BuildOptions], tiny_src: Path, tmp_path: Path
) -> None:
    # GIVEN two builds of the same inputs (different worker counts, different output names)
    first = build(options_for(output=tmp_path / "a" / "model.tar.gz", workers=1))
    second = build(options_for(output=tmp_path / "b" / "model.tar.gz", workers=3))
    # THEN the archives are the same bytes, and the content hash is the archive's sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    assert first.content_hash == _file_sha(first.path)

    # WHEN one byte of one adapter's weights changes
    changed = tmp_path / "changed-alpha"
    shutil.copytree(tiny_src / "adapters" / "alpha", changed)
    weights = changed / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    third = build(options_for(output=tmp_path / "c" / "model.tar.gz",
                              adapters=(("alpha", changed), ("beta", tiny_src / "adapters" / "beta"))))
    # THEN the archive hash and that adapter's sha256 change, the other adapter's does not
    assert third.content_hash != first.content_hash
    sha = {a["name"]: a["sha256"] for a in first.manifest["adapters"]}
    sha_changed = {a["name"]: a["sha256"] for a in third.manifest["adapters"]}
    assert sha_changed["alpha"] != sha["alpha"]
    assert sha_changed["beta"] == sha["beta"]


def test_archive_layout_matches_the_contract(options_for: Callable[..., BuildOptions], tmp_path: Path) -> None:
    result = build(options_for())
    root = safe_extract(result.path, tmp_path / "extracted")
    manifest = verify_tree(root)  # every file present, sizes and sha256 as listed

    top = sorted(p.name for p in root.iterdir())
    assert top == ["adapters", "base", "code", "lora_endpoint", "manifest.json", "model.py", "requirements.txt",
                   "serving.properties"]
    assert sorted(p.name for p in (root / "adapters").iterdir()) == ["alpha", "beta"]
    assert not list(root.rglob("__pycache__"))
    # The containers get the namespace's __init__, the contract and the handler - nothing of the packager, the
    # local endpoint, the clients or training - under the names the tree uses.
    source = Path(__file__).resolve().parents[2] / "lora_endpoint"
    shipped = {p.relative_to(root / "lora_endpoint").as_posix() for p in (root / "lora_endpoint").rglob("*.py")}
    assert shipped == {"__init__.py"} | {
        p.relative_to(source).as_posix() for part in ("contract", "handler") for p in (source / part).rglob("*.py")
        if "__pycache__" not in p.parts}
    assert "handler/entry.py" in shipped and "contract/api.py" in shipped

    # model.py exposes only the DJL entries (async and sync handle, the adapter calls); inference.py the
    # four toolkit functions
    assert _imported_names(root / "model.py") == {
        "lora_endpoint.handler.entry": ["handle", "handle_sync", "register_adapter", "unregister_adapter",
                                        "update_adapter"]}
    assert "def " not in (root / "model.py").read_text()
    assert _imported_names(root / "code" / "inference.py") == {
        "lora_endpoint.handler.entry": ["input_fn", "model_fn", "output_fn", "predict_fn"]}
    assert (root / "code" / "requirements.txt").is_file()

    props = _properties(root / "serving.properties")
    assert props["engine"] == "Python"
    assert props["option.entryPoint"] == "model.py"
    assert props["option.rolling_batch"] == "disable"
    # DJL's async mode by default: the async handle (no option.handler) and no DJL batching
    assert props["option.async_mode"] == "true" and "option.handler" not in props
    assert not {"batch_size", "max_batch_delay"} & set(props)
    assert "option.tensor_parallel_degree" in props
    assert manifest["serving"]["djl_mode"] == "async" and manifest["serving"]["batch_size"] is None
    assert "option.base_model" not in props, "a bundled base is found at base/"
    # every handler option maps onto a HandlerSettings field and parses
    lmi = {"entryPoint", "rolling_batch", "async_mode", "handler", "tensor_parallel_degree", "max_lora_rank"}
    options = {k[len("option."):]: v for k, v in props.items() if k.startswith("option.")}
    handler_opts = {k: v for k, v in options.items() if k not in lmi}
    assert set(handler_opts) <= {f.name for f in dataclasses.fields(HandlerSettings)}
    assert HandlerSettings.from_options(handler_opts, env={}).dtype == "auto"

    import lora_endpoint.handler

    assert manifest["package_version"] == lora_endpoint.__version__
    assert manifest["base_model"] == {"source": "bundled", "reference": "base", "model_type": "llama"}
    alpha = next(a for a in manifest["adapters"] if a["name"] == "alpha")
    assert (alpha["rank"], alpha["alpha"], alpha["target_modules"]) == (4, 8.0, ["q_proj", "v_proj"])
    lines = sorted(f"{_file_sha(p)}  {p.relative_to(root / 'adapters/alpha').as_posix()}\n"
                   for p in (root / "adapters" / "alpha").rglob("*") if p.is_file())
    assert alpha["sha256"] == hashlib.sha256("".join(lines).encode()).hexdigest()


def test_serving_options_reach_serving_properties(options_for: Callable[..., BuildOptions], tmp_path: Path) -> None:
    result = build(options_for(format="dir", output=tmp_path / "tree", dtype="bfloat16", djl_mode="sync",
                               batch_size=4, max_batch_delay_ms=25, max_new_tokens=256, tensor_parallel_degree=2))
    props = _properties(result.path / "serving.properties")
    assert (props["batch_size"], props["max_batch_delay"], props["option.tensor_parallel_degree"]) == ("4", "25", "2")
    assert (props["option.async_mode"], props["option.handler"]) == ("false", "handle_sync")
    assert (props["option.dtype"], props["option.max_new_tokens"]) == ("bfloat16", "256")
    assert result.manifest["serving"]["djl_mode"] == "sync"


def test_sync_mode_gets_djl_s_batching_defaults(options_for: Callable[..., BuildOptions]) -> None:
    options = options_for(djl_mode="sync")
    assert (options.batch_size, options.max_batch_delay_ms) == (1, 100)


@pytest.mark.parametrize("overrides", [{"batch_size": 4}, {"max_batch_delay_ms": 10}, {"batch_size": 1},
                                       {"djl_mode": "rolling"}, {"djl_mode": "sync", "batch_size": 0}])
def test_batching_outside_sync_mode_and_unknown_modes_are_refused(options_for: Callable[..., BuildOptions],
                                                                  overrides: dict[str, object]) -> None:
    with pytest.raises(PackageError, match=r"--djl-mode|--batch-size"):
        options_for(**overrides)


def test_the_cli_refuses_batch_size_in_async_mode_with_exit_2(tiny_src: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from lora_endpoint.packaging.cli import main

    out = tmp_path / "never.tar.gz"
    code = main(["build", "--base-model", str(tiny_src / "base"), "--adapter", f"alpha={tiny_src / 'adapters/alpha'}",
                 "--batch-size", "4", "--output", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--djl-mode sync" in err and err.count("\n") == 1 and not out.exists()


def test_format_dir_is_named_by_the_manifest_hash(options_for: Callable[..., BuildOptions], tmp_path: Path) -> None:
    tree = build(options_for(format="dir", output=tmp_path / "tree"))
    archive = build(options_for())
    assert tree.path.is_dir()
    assert tree.content_hash == _file_sha(tree.path / "manifest.json")
    assert verify_tree(tree.path) == archive.manifest, "same files and digests whichever format"
    assert {p.stat().st_mode & 0o777 for p in tree.path.rglob("*") if p.is_file()} == {0o644}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary leftovers"


@pytest.mark.parametrize("reference", ["s3://models-bucket/bases/tiny-llama", "org/tiny-llama"])
def test_a_remote_base_is_referenced_not_bundled(
    reference: str, options_for: Callable[..., BuildOptions], tiny_src: Path, tmp_path: Path
) -> None:
    # GIVEN an adapter that declares the same base by name
    adapter = tmp_path / "tiny-llama-adapter"
    shutil.copytree(tiny_src / "adapters" / "alpha", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "someone/tiny-llama"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = build(options_for(base_model=reference, adapters=(("alpha", adapter),)))
    root = safe_extract(result.path, tmp_path / "x")
    assert not (root / "base").exists()
    assert _properties(root / "serving.properties")["option.base_model"] == reference
    assert result.manifest["base_model"] == {"source": reference.split(":")[0] if "://" in reference else "hub",
                                             "reference": reference}


def test_convert_pickle_rewrites_weights_as_safetensors(
    options_for: Callable[..., BuildOptions], adapter_copy: Callable[[str], Path], tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    # GIVEN an adapter saved the old way: adapter_model.bin only
    folder = adapter_copy("old")
    tensors = load_file(folder / "adapter_model.safetensors")
    torch.save(tensors, folder / "adapter_model.bin")
    (folder / "adapter_model.safetensors").unlink()
    # WHEN it is packaged with --convert-pickle
    result = build(options_for(adapters=(("old", folder),), convert_pickle=True))
    root = safe_extract(result.path, tmp_path / "x")
    # THEN the package has safetensors with the same tensors, and no pickle; the source is untouched
    assert not (root / "adapters" / "old" / "adapter_model.bin").exists()
    converted = load_file(root / "adapters" / "old" / "adapter_model.safetensors")
    assert converted.keys() == tensors.keys()
    assert all(torch.equal(converted[k], tensors[k]) for k in tensors)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.bin"]


def test_merge_bakes_the_adapter_into_the_base(
    options_for: Callable[..., BuildOptions], tiny_src: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result = build(options_for(merge=True, adapters=(("alpha", tiny_src / "adapters" / "alpha"),)))
    root = safe_extract(result.path, tmp_path / "x")
    assert not (root / "adapters").exists()
    assert result.manifest["adapters"] == []
    assert result.manifest["base_model"]["merged_adapter"]["name"] == "alpha"
    assert (root / "base" / "tokenizer.json").is_file()

    ids = torch.tensor([[1, 5, 9, 42, 7]])
    merged = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tiny_src / "base", dtype=torch.float32)
    unmerged = PeftModel.from_pretrained(base, tiny_src / "adapters" / "alpha")
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_src / "base", dtype=torch.float32)(ids).logits
        expected = unmerged(ids).logits
        actual = merged(ids).logits
    assert not torch.allclose(plain, expected), "the adapter changes the output"
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_hub_cache_snapshot_is_known_by_its_repo_name() -> None:
    from lora_endpoint.packaging.base import BaseModel

    snapshot = Path("/cache/hub/models--meta-llama--Llama-3.1-8B/snapshots/0123abcd")
    base = BaseModel(path=snapshot, config={}, weight_names=frozenset(), files=())
    assert {"llama-3.1-8b", "0123abcd"} <= base.name_hints
