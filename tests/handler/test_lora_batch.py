"""The batched LoRA path: the same tokens and logits as peft's, peft's layers back after, honest `supported`."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler import lora_batch
from lora_endpoint.handler.generation import Row, generate
from lora_endpoint.handler.loading import BASE_ADAPTER_NAME, load_model
from lora_endpoint.handler.lora_batch import BatchedLora
from lora_endpoint.handler.sampling import SamplingParams
from scripts.tiny_model import build_lora_adapter

GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True)
PROMPTS = ("Hello world", "The quick brown fox jumps over", "Question: what", "A LoRA adapter adds a", "0123")
# float32 logits of the batched path vs peft's: the same sums in another order, and the scaling folded
# into B (measured: max difference about 3e-6 on logits of size 4).
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def four_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model's alpha and beta (r=4 on q/v) plus gamma (r=8 on attention and MLP) and delta
    (r=2 with a rank_pattern and an alpha_pattern)."""
    out = tmp_path_factory.mktemp("four") / "pkg"
    shutil.copytree(tiny_model_dir, out)
    base = out / "base"
    build_lora_adapter(
        base, out / "adapters" / "gamma", seed=7, r=8, alpha=4, scale=4.0,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"),
    )
    build_lora_adapter(
        base, out / "adapters" / "delta", seed=8, r=2, alpha=2, scale=4.0, target_modules=("q_proj", "v_proj"),
        rank_pattern={"v_proj": 6}, alpha_pattern={"q_proj": 32},
    )
    return out


@pytest.fixture(scope="module")
def four(four_dir: Path):  # type: ignore[no-untyped-def]
    lm = load_model(four_dir, HandlerSettings.from_env({}))
    assert sorted(lm.adapters) == ["alpha", "beta", "delta", "gamma"]
    return lm


@contextlib.contextmanager
def peft_only() -> Iterator[None]:
    """Generation as before this path: peft's adapter_names for mixed rows, its plain path otherwise."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BatchedLora, "supported", property(lambda self: False))
        yield


def rows_for(lm, adapters) -> list[Row]:  # type: ignore[no-untyped-def]
    return [
        Row(tuple(lm.tokenizer(PROMPTS[i % len(PROMPTS)]).input_ids), name, replace(GREEDY, max_new_tokens=6 + i % 5))
        for i, name in enumerate(adapters)
    ]


MIXES = [
    ["alpha", None, "beta", "gamma", "delta", None, "alpha"],  # every adapter and base rows
    ["gamma", "delta", "gamma"],  # no base row; layers only gamma has
    ["alpha", None, None],  # one adapter and base: the stacks' subset, MLP layers base only
    ["delta", "beta"],
]


@pytest.mark.parametrize("adapters", MIXES, ids=lambda a: "-".join(n or "base" for n in a))
def test_mixed_batch_tokens_equal_peft_adapter_names_and_every_solo(four, adapters) -> None:
    # GIVEN rows for several adapters and the base, with different prompt lengths and limits
    rows = rows_for(four, adapters)
    assert lora_batch.for_model(four.model, sorted(four.adapters)).supported
    # WHEN they run as one batch on the batched path, as one batch on peft's, and each alone on peft's
    batched = generate(four, rows)
    with peft_only():
        peft_batch = generate(four, rows)
        solos = [generate(four, [row])[0] for row in rows]
    # THEN every row has the same greedy tokens all three ways
    for got, via_peft, alone in zip(batched, peft_batch, solos, strict=True):
        assert got.token_ids == via_peft.token_ids == alone.token_ids
        assert got.text == alone.text


def test_uniform_batches_on_the_batched_path_equal_peft(four) -> None:
    for name in (None, "alpha", "gamma", "delta"):
        rows = rows_for(four, [name] * 3)
        with peft_only():
            want = [r.token_ids for r in generate(four, rows)]
        assert [r.token_ids for r in generate(four, rows)] == want


@pytest.mark.parametrize("length", [1, 9])  # a decode step and a prefill
def test_logits_close_to_peft_adapter_names(four, length: int) -> None:
    adapters = ["delta", None, "gamma", "alpha", "beta", "gamma"]
    ids = torch.randint(5, 300, (len(adapters), length), generator=torch.Generator().manual_seed(length))
    with torch.inference_mode():
        want = four.model(input_ids=ids, adapter_names=[a or BASE_ADAPTER_NAME for a in adapters]).logits
        with lora_batch.for_model(four.model, sorted(four.adapters)).routing(adapters):
            got = four.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, **TOLERANCE)
    assert not torch.equal(got[1], got[2])  # the rows really went different ways


def test_mixed_generation_does_not_run_peft_layer_forwards(four, monkeypatch: pytest.MonkeyPatch) -> None:
    from peft.tuners.lora import Linear

    calls = []
    original = Linear.forward

    def counting(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("adapter_names"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Linear, "forward", counting)
    generate(four, rows_for(four, ["alpha", "beta", None]))
    assert calls == []  # peft's adapter_names path would run every LoRA layer's own forward each step


def _forwards_are_peft_s(model) -> bool:  # type: ignore[no-untyped-def]
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    return bool(layers) and all("forward" not in vars(m) for m in layers)


def test_routing_puts_peft_layers_back_after_an_exception(four) -> None:
    batched = lora_batch.for_model(four.model, sorted(four.adapters))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode():
        want = four.model(input_ids=ids, adapter_names=["alpha", "gamma"]).logits
        # WHEN a forward pass fails inside the routing (here: more rows than were routed)
        with pytest.raises(ValueError, match="routed 1 rows but the forward pass has 2"), batched.routing(["beta"]):
            assert not _forwards_are_peft_s(four.model)
            four.model(input_ids=ids)
        # THEN peft's own forwards are back, and the next routing computes from a clean state
        assert _forwards_are_peft_s(four.model)
        with pytest.raises(KeyError), batched.routing(["alpha", None]):
            raise KeyError("the caller's own error")
        assert _forwards_are_peft_s(four.model)
        with batched.routing(["alpha", "gamma"]):
            got = four.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, **TOLERANCE)


def test_routing_refuses_unknown_adapters_and_empty_batches(four) -> None:
    batched = lora_batch.for_model(four.model, sorted(four.adapters))
    for adapters in (["alpha", "nope"], []):
        with pytest.raises(ValueError, match="one adapter"), batched.routing(adapters):
            pass
    assert _forwards_are_peft_s(four.model)


def _peft_model(base: Path, **config):  # type: ignore[no-untyped-def]
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    settings = {"r": 2, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False, **config}
    return get_peft_model(model, LoraConfig(**settings)).eval()


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({}, None),
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"target_modules": ["q_proj", "embed_tokens"]}, "Embedding LoRA layer"),
    ],
    ids=["plain", "dora", "modules_to_save", "embedding"],
)
def test_supported_is_false_for_what_the_path_cannot_compute(tiny_model_dir, config, reason) -> None:
    batched = BatchedLora(_peft_model(tiny_model_dir / "base", **config), ["default"])
    assert batched.supported is (reason is None)
    if reason:
        assert reason in str(batched.reason)
        with pytest.raises(RuntimeError, match="cannot serve"), batched.routing(["default"]):
            pass


def test_supported_is_false_when_merged_or_training(tiny_model_dir) -> None:
    model = _peft_model(tiny_model_dir / "base")
    batched = BatchedLora(model, ["default"])
    assert batched.supported
    model.train()
    assert "training" in str(batched.reason)
    model.eval()
    model.merge_adapter()
    assert "merged" in str(batched.reason)


def test_an_unsupported_adapter_falls_back_to_peft_with_the_same_tokens(tiny_model_dir, tmp_path) -> None:
    # GIVEN a served adapter with LoRA on the embedding (not batched here) next to a plain one
    shutil.copytree(tiny_model_dir, tmp_path / "pkg")
    build_lora_adapter(
        tmp_path / "pkg" / "base", tmp_path / "pkg" / "adapters" / "embed", seed=3, scale=4.0,
        target_modules=("embed_tokens", "q_proj"),
    )
    lm = load_model(tmp_path / "pkg", HandlerSettings.from_env({}))
    assert "embed" in lm.adapters, lm.failed_adapters
    assert not lora_batch.for_model(lm.model, sorted(lm.adapters)).supported
    # WHEN a mixed batch runs THEN (through peft's adapter_names) every row has its solo tokens
    rows = rows_for(lm, ["embed", "alpha", None])
    batched = generate(lm, rows)
    assert [r.token_ids for r in batched] == [generate(lm, [row])[0].token_ids for row in rows]
    assert len({tuple(r.token_ids[:6]) for r in batched}) == 3


def test_for_model_builds_again_when_an_adapter_is_reloaded(four_dir, tmp_path) -> None:
    # GIVEN a model whose adapter beta has been through the batched path once
    lm = load_model(four_dir, HandlerSettings.from_env({}))
    first = lora_batch.for_model(lm.model, sorted(lm.adapters))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode(), first.routing(["beta", None]):
        before = lm.model(input_ids=ids).logits
    # WHEN beta is replaced by other weights under the same name
    other = build_lora_adapter(four_dir / "base", tmp_path / "other", seed=99, scale=4.0)
    lm.model.delete_adapter("beta")
    lm.model.load_adapter(str(other), adapter_name="beta", is_trainable=False)
    # THEN the batched path serves the new weights, as peft does
    again = lora_batch.for_model(lm.model, sorted(lm.adapters))
    with torch.inference_mode():
        want = lm.model(input_ids=ids, adapter_names=["beta", BASE_ADAPTER_NAME]).logits
        with again.routing(["beta", None]):
            got = lm.model(input_ids=ids).logits
    assert again is not first
    torch.testing.assert_close(got, want, **TOLERANCE)
    assert not torch.allclose(before[0], got[0])


def _two_adapters(base: Path, second: str):  # type: ignore[no-untyped-def]
    """A peft model with adapters ``default`` and ``second`` (r=2 on q/v, random factors)."""
    from peft import LoraConfig

    model = _peft_model(base)
    model.add_adapter(second, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    return model


def test_weights_written_in_place_are_picked_up_and_non_finite_ones_turn_the_path_off(tiny_model_dir) -> None:
    # GIVEN two adapters on the batched path
    model = _two_adapters(tiny_model_dir / "base", "other")
    batched = BatchedLora(model, ["default", "other"])
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    adapters = ["default", "other"]

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            want = model(input_ids=ids, adapter_names=adapters).logits
            with batched.routing(adapters):
                return model(input_ids=ids).logits, want

    got, want = both()
    torch.testing.assert_close(got, want, **TOLERANCE)
    weight = model.base_model.model.model.layers[0].self_attn.v_proj.lora_B["other"].weight
    # WHEN peft's weights are written in place THEN the batched path follows
    with torch.no_grad():
        weight.mul_(3.0)
    changed, want = both()
    torch.testing.assert_close(changed, want, **TOLERANCE)
    assert not torch.allclose(changed[1], got[1])
    # WHEN one becomes NaN THEN the path is off (a NaN would reach every row of the shared product)
    with torch.no_grad():
        weight[0, 0] = float("nan")
    assert batched.reason == "adapter 'other' has non-finite LoRA weights"


def test_an_overflow_in_one_adapters_columns_does_not_reach_other_rows(tiny_model_dir) -> None:
    # GIVEN an adapter whose shrink overflows to infinity for any input, next to a sane one
    model = _two_adapters(tiny_model_dir / "base", "huge")
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "huge" in module.lora_A:
                module.lora_A["huge"].weight.fill_(3e38)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.inference_mode():
        want = model(input_ids=ids, adapter_names=["default", "huge"]).logits
        with BatchedLora(model, ["default", "huge"]).routing(["default", "huge"]):
            got = model(input_ids=ids).logits
    # THEN the other row's logits are finite and peft's (its row of x A^T has inf in huge's columns)
    assert not torch.isfinite(want[1]).all()
    torch.testing.assert_close(got[0], want[0], **TOLERANCE)


def test_bench_script_prints_every_variant(capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import bench_lora

    assert bench_lora.main(["--quick", "--rows", "4"]) == 0
    table = capsys.readouterr().out
    for key in bench_lora.VARIANTS:
        assert f"| {key}: " in table


def test_bench_script_refuses_a_bad_count(capsys: pytest.CaptureFixture[str]) -> None:
    from scripts import bench_lora

    with pytest.raises(SystemExit) as exit_info:
        bench_lora.main(["--rows", "0"])
    assert exit_info.value.code == 2
    assert "--rows must be at least 1, got 0" in capsys.readouterr().err
