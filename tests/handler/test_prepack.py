"""oneDNN-packed linear weights on the CPU: the plain forward's answers, and the plain forward where packing
cannot give them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler import prepack
from lora_endpoint.handler.generation import Row, generate
from lora_endpoint.handler.loading import load_model
from lora_endpoint.handler.sampling import SamplingParams

F = torch.nn.functional
# The same products summed in another order (measured: about 1e-5 on float32 layers of this size).
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


def _packed(model: torch.nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(vars(m).get("forward"), prepack._PackedForward)]


@pytest.fixture
def linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    layer = torch.nn.Linear(40, 24)
    assert prepack.prepack(torch.nn.Sequential(layer)) == 1
    return layer


def test_the_served_model_is_packed_except_the_lora_factors(loaded) -> None:  # type: ignore[no-untyped-def]
    names = _packed(loaded.model)
    plain = [n for n, m in loaded.model.named_modules() if type(m) is torch.nn.Linear and n not in names]
    assert names and all("lora_" not in n for n in names)
    assert plain and all(".lora_A." in n or ".lora_B." in n for n in plain)


def test_packed_logits_and_greedy_tokens_equal_the_plain_model(tiny_model_dir: Path) -> None:
    packed = load_model(tiny_model_dir, HandlerSettings.from_env({}))
    plain = load_model(tiny_model_dir, HandlerSettings.from_env({"LORA_CPU_PREPACK": "false"}))
    assert _packed(packed.model) and not _packed(plain.model)
    ids = torch.randint(5, 300, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(packed.model(input_ids=ids).logits, plain.model(input_ids=ids).logits,
                                   **TOLERANCE)
    greedy = SamplingParams(max_new_tokens=12, ignore_eos=True)
    rows = [Row(tuple(packed.tokenizer(p).input_ids), a, greedy)
            for p, a in (("Hello world", None), ("The quick brown fox", "alpha"), ("0123", "beta"))]
    assert [r.token_ids for r in generate(packed, rows)] == [r.token_ids for r in generate(plain, rows)]


def test_autograd_gets_the_plain_forward(linear: torch.nn.Linear) -> None:
    x = torch.randn(3, 40, requires_grad=True)
    out = linear(x)
    assert torch.equal(out, F.linear(x, linear.weight, linear.bias))
    out.sum().backward()
    assert x.grad is not None and linear.weight.grad is not None


@pytest.mark.parametrize("x", [torch.randn(2, 40).bfloat16(), torch.randn(0, 40)], ids=["bfloat16", "empty"])
def test_what_packing_does_not_cover_gets_the_plain_forward(linear: torch.nn.Linear, x: torch.Tensor) -> None:
    with torch.inference_mode():
        if x.dtype is torch.bfloat16:
            linear.to(torch.bfloat16)
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))


def test_a_weight_written_in_place_is_packed_again(linear: torch.nn.Linear) -> None:
    x = torch.randn(5, 40)
    with torch.no_grad():
        linear.weight.mul_(2)  # bumps the version counter
    with torch.inference_mode():
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias), **TOLERANCE)
        linear.weight.data = torch.randn(24, 40)  # new storage
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias), **TOLERANCE)


def test_repack_and_unpack(linear: torch.nn.Linear) -> None:
    model = torch.nn.Sequential(linear)
    x = torch.randn(5, 40)
    linear.weight.data.add_(1)  # through .data: the version counter does not see it
    prepack.repack(model)
    with torch.inference_mode():
        torch.testing.assert_close(linear(x), F.linear(x, linear.weight, linear.bias), **TOLERANCE)
    assert prepack.unpack(model) == 1 and not _packed(model)
    with torch.inference_mode():
        assert torch.equal(linear(x), F.linear(x, linear.weight, linear.bias))


@pytest.fixture
def probe_again() -> Iterator[None]:
    prepack.available.cache_clear()
    yield
    prepack.available.cache_clear()


@pytest.mark.usefixtures("probe_again")
def test_a_torch_without_onednn_packs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert prepack.prepack(model) == 0 and not _packed(model)


@pytest.mark.usefixtures("probe_again")
def test_a_packed_result_that_disagrees_on_the_probe_packs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = torch.ops.mkldnn._linear_pointwise

    class Ops:
        _reorder_linear_weight = torch.ops.mkldnn._reorder_linear_weight

        @staticmethod
        def _linear_pointwise(*args):  # type: ignore[no-untyped-def]
            return real(*args) + 1

    monkeypatch.setattr(torch.ops, "mkldnn", Ops)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert prepack.prepack(model) == 0


def test_the_setting_is_read_from_the_environment() -> None:
    assert HandlerSettings.from_env({}).cpu_prepack is True
    assert HandlerSettings.from_env({"LORA_CPU_PREPACK": "false"}).cpu_prepack is False
