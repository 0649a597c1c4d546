"""An adapter that cannot be served is left out by name at start-up; the base and the others still answer."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.errors import ModelLoadError, UnknownAdapter
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.generation import Row, generate
from lora_endpoint.handler.info import render as info
from lora_endpoint.handler.loading import LoadedModel, load_model
from lora_endpoint.handler.rows import resolve_adapter
from lora_endpoint.handler.sampling import SamplingParams

GREEDY = SamplingParams(max_new_tokens=8)
PROMPTS = ("Hello world", "The quick brown fox")
Q0 = "base_model.model.model.layers.0.self_attn.q_proj"


def _edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _nan_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(folder / "adapter_model.safetensors")
    tensors[f"{Q0}.lora_B.weight"][0, 0] = float("nan")
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


@pytest.fixture(scope="module")
def real_adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real peft adapters: one trained for a base of hidden size 64, one DoRA for the tiny base."""
    from scripts.tiny_model import TinyModelConfig, build_lora_adapter, build_tiny_model

    root = tmp_path_factory.mktemp("real-adapters")
    wide = build_tiny_model(root / "wide-base", TinyModelConfig(hidden_size=64, intermediate_size=128))
    return {
        "wide": build_lora_adapter(wide, root / "wide", seed=11),
        "dora": build_lora_adapter(tiny_model_dir / "base", root / "dora", seed=12, use_dora=True),
    }


def _swap_for(source: Path) -> Callable[[Path], None]:
    def swap(folder: Path) -> None:
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            shutil.copyfile(source / name, folder / name)

    return swap


# kind -> (how to break a copy of ``alpha``, what the reason must say)
BROKEN: dict[str, tuple[Callable[[Path, dict[str, Path]], None], str]] = {
    "wrong-rank": (lambda f, real: _edit_config(f, r=16), r"lora_A.weight has shape \[4, 32\], expected \[16, 32\]"),
    "wrong-hidden-size": (lambda f, real: _swap_for(real["wide"])(f),
                          r"has shape \[4, 64\], expected \[4, 32\] .*in_features 32"),
    "nan-weights": (lambda f, real: _nan_weights(f), r"lora_B.weight holds non-finite values"),
    "nan-alpha": (lambda f, real: _edit_config(f, lora_alpha=float("nan")), r"'lora_alpha' must be a finite number"),
    "dora": (lambda f, real: _swap_for(real["dora"])(f), r"field 'use_dora' is true"),
    "bad-tokenizer": (lambda f, real: (f / "tokenizer.json").write_text("{not json"),
                      r"^its tokenizer files do not load \(\w+"),
    "no-weights": (lambda f, real: (f / "adapter_model.safetensors").unlink(),
                   r"^weights are missing: expected adapter_model.safetensors in adapters/broken$"),
}


def _model_dir(tiny_model_dir: Path, root: Path, broken: dict[str, Callable[[Path], None]]) -> Path:
    """``base/`` + the good ``alpha`` + one copy of ``alpha`` per entry of ``broken``, broken by it."""
    shutil.copytree(tiny_model_dir / "base", root / "base")
    shutil.copytree(tiny_model_dir / "adapters" / "alpha", root / "adapters" / "alpha")
    for name, breaker in broken.items():
        breaker(Path(shutil.copytree(tiny_model_dir / "adapters" / "alpha", root / "adapters" / name)))
    return root


def _tokens(lm: LoadedModel, adapters: list[str | None]) -> list[tuple[int, ...]]:
    rows = [Row(tuple(lm.tokenizer(p).input_ids), a, GREEDY) for p, a in zip(PROMPTS, adapters, strict=True)]
    return [tuple(r.token_ids) for r in generate(lm, rows)]


# base, alpha, and both in one mixed batch
ROUTES: tuple[list[str | None], ...] = ([None, None], ["alpha", "alpha"], [None, "alpha"])


@pytest.fixture(scope="module")
def reference(loaded: LoadedModel) -> list[list[tuple[int, ...]]]:
    """Greedy tokens of base and alpha from the model loaded with no broken adapter around."""
    return [_tokens(loaded, adapters) for adapters in ROUTES]


def _assert_serves_base_and_alpha_as_before(lm: LoadedModel, reference: list[list[tuple[int, ...]]]) -> None:
    assert [_tokens(lm, adapters) for adapters in ROUTES] == reference


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_adapter_is_skipped_and_the_base_and_the_good_one_are_served(
    kind: str, tiny_model_dir: Path, reference: list[list[tuple[int, ...]]], real_adapters: dict[str, Path],
    tmp_path: Path,
) -> None:
    # GIVEN a model dir with the good adapter alpha and one broken adapter
    breaker, reason = BROKEN[kind]
    model_dir = _model_dir(tiny_model_dir, tmp_path / "model", {"broken": lambda f: breaker(f, real_adapters)})
    # WHEN the handler loads it
    lm = load_model(model_dir, HandlerSettings())
    # THEN the broken one is reported by name with a short reason, without local paths
    assert sorted(lm.adapters) == ["alpha"]
    assert list(lm.failed_adapters) == ["broken"]
    assert re.search(reason, lm.failed_adapters["broken"]), lm.failed_adapters["broken"]
    assert str(tmp_path) not in lm.failed_adapters["broken"]
    assert info(lm)["failed_adapters"] == [{"name": "broken", "reason": lm.failed_adapters["broken"]}]
    # AND a request for it is a 404 unknown_adapter that says it failed to load
    with pytest.raises(UnknownAdapter, match=r"adapter 'broken' failed to load at start-up") as err:
        resolve_adapter(lm, "broken")
    assert err.value.status == 404 and err.value.code == "unknown_adapter"
    # AND the base and alpha answer exactly as they do without it, alone and in one mixed batch
    _assert_serves_base_and_alpha_as_before(lm, reference)


def test_when_peft_itself_raises_the_model_is_left_as_it_was(
    tiny_model_dir: Path, reference: list[list[tuple[int, ...]]], real_adapters: dict[str, Path], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN the weights check switched off, so that peft's own load_state_dict meets the bad shapes:
    # "aardvark" loads first (peft wraps the base, injects its layers, then raises), "zulu" after alpha
    import lora_endpoint.handler.registry

    monkeypatch.setattr(lora_endpoint.handler.registry, "check_adapter_weights", lambda info, base=None: None)
    model_dir = _model_dir(tiny_model_dir, tmp_path / "model", {
        "aardvark": lambda f: _edit_config(f, r=16),
        "zulu": _swap_for(real_adapters["wide"]),
    })
    # WHEN the handler loads it
    lm = load_model(model_dir, HandlerSettings())
    # THEN both are reported with peft's (torch's) error and nothing of them is left in the model
    assert sorted(lm.adapters) == ["alpha"] and sorted(lm.failed_adapters) == ["aardvark", "zulu"]
    assert all("size mismatch" in reason for reason in lm.failed_adapters.values()), lm.failed_adapters
    assert set(lm.model.peft_config) == {"alpha"}
    layers = [m for m in lm.model.modules() if hasattr(m, "lora_A")]
    assert layers and all(set(m.lora_A) == {"alpha"} for m in layers)
    _assert_serves_base_and_alpha_as_before(lm, reference)


@pytest.mark.parametrize("breaker", [lambda f: _edit_config(f, lora_alpha=float("inf")), _nan_weights],
                         ids=["refused-before-the-base-loads", "refused-after-the-base-loads"])
def test_a_default_adapter_that_fails_fails_the_load(
    breaker: Callable[[Path], None], tiny_model_dir: Path, tmp_path: Path
) -> None:
    # Serving the base instead would answer every request that names no adapter with the wrong model.
    model_dir = _model_dir(tiny_model_dir, tmp_path / "model", {"broken": breaker})
    with pytest.raises(ModelLoadError, match=r"LORA_DEFAULT_ADAPTER 'broken' cannot be served: "):
        load_model(model_dir, HandlerSettings(default_adapter="broken"))
    assert load_model(model_dir, HandlerSettings(default_adapter="alpha")).settings.default_adapter == "alpha"


def test_merge_fails_the_load_when_its_adapter_fails(tiny_model_dir: Path, tmp_path: Path) -> None:
    root = tmp_path / "model"
    shutil.copytree(tiny_model_dir / "base", root / "base")
    _nan_weights(Path(shutil.copytree(tiny_model_dir / "adapters" / "alpha", root / "adapters" / "only")))
    with pytest.raises(ModelLoadError, match=r"LORA_MERGE's adapter 'only' cannot be served: .*non-finite"):
        load_model(root, HandlerSettings(merge=True))


def test_dora_is_served_merged_with_the_tokens_peft_gives(
    tiny_model_dir: Path, real_adapters: dict[str, Path], tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    # GIVEN a model dir whose one adapter is a real DoRA adapter
    root = tmp_path / "model"
    shutil.copytree(tiny_model_dir / "base", root / "base")
    shutil.copytree(real_adapters["dora"], root / "adapters" / "dora")
    # WHEN it is served with LORA_MERGE THEN it loads, and greedy tokens equal peft's unmerged DoRA
    lm = load_model(root, HandlerSettings(merge=True))
    assert lm.merged_adapter == "dora" and not lm.failed_adapters
    base = AutoModelForCausalLM.from_pretrained(root / "base")
    reference = PeftModel.from_pretrained(base, root / "adapters" / "dora")
    ids = torch.tensor([lm.tokenizer(PROMPTS[0]).input_ids])
    want = reference.generate(input_ids=ids, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                              pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:]
    got = generate(lm, [Row(tuple(ids[0].tolist()), resolve_adapter(lm, "dora"), GREEDY)])[0].token_ids
    assert tuple(got) == tuple(want.tolist())[: len(got)]
