"""On the demo's trained adapter, vLLM and the transformers engine answer the demo questions alike (greedy).

The demo's model and adapter are made by the demo's own code (``scripts.demo_model``, ``REDUCED`` sizes on the
first four questions, as ``tests/training/test_demo_reduced.py``): a Llama with head dim 32, which vLLM's CPU
attention accepts, and a rank-64 adapter trained on invented facts, so the adapter must be applied for the
answers to be right. Runs in the vLLM tier only (``make test-vllm``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.generate import GenerateRequest
from lora_endpoint.handler.loading import LoadedModel, load_model
from lora_endpoint.handler.sampling import SamplingParams
from lora_endpoint.handler.service import run

if "vllm" not in os.environ.get("LORA_TEST_ENGINES", ""):
    pytest.skip("compares vLLM with the transformers engine on the demo's adapter (make test-vllm)",
                allow_module_level=True)

COUNT = 4  # the questions the reduced demo trains on


@pytest.fixture(scope="module")
def demo_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from scripts.demo_model import REDUCED, build_base, questions, train_adapter, write_subset

    root = tmp_path_factory.mktemp("demo") / "pkg"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # seeded training repeats exactly on one thread
    try:
        build_base(root / "base", REDUCED, progress=False, log=lambda _: None)
        data = write_subset(questions(COUNT), root.parent / "qa.jsonl")
        train_adapter(root / "base", data, root / "adapters" / "demo", REDUCED, progress=False, log=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return root


def _engine(package: Path, kind: str, cache: Path) -> Iterator[LoadedModel]:
    loaded = load_model(package, HandlerSettings(engine=kind, adapter_cache_dir=str(cache)))
    assert loaded.engine_kind == kind
    yield loaded
    if loaded.engine is not None:
        loaded.engine.stop()


@pytest.fixture(scope="module")
def vllm_lm(demo_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    yield from _engine(demo_package, "vllm", tmp_path_factory.mktemp("vllm-cache"))


@pytest.fixture(scope="module")
def transformers_lm(demo_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadedModel]:
    yield from _engine(demo_package, "transformers", tmp_path_factory.mktemp("hf-cache"))


def _answers(lm: LoadedModel, adapter: str | None) -> list[str]:
    from scripts.demo_model import questions

    request = GenerateRequest(inputs=tuple(e.prompt for e in questions(COUNT)), adapters=(adapter,) * COUNT,
                              params=SamplingParams(max_new_tokens=12), is_list=True)
    answer = run(lm, [request])[0]
    assert isinstance(answer, list), answer
    return [item["generated_text"] for item in answer]


@pytest.mark.parametrize("adapter", [None, "demo"])
def test_both_engines_answer_the_demo_questions_identically(vllm_lm: LoadedModel, transformers_lm: LoadedModel,
                                                            adapter: str | None) -> None:
    assert _answers(vllm_lm, adapter) == _answers(transformers_lm, adapter)


def test_on_vllm_the_adapter_knows_the_answers_and_the_base_does_not(vllm_lm: LoadedModel) -> None:
    from scripts.demo_model import is_correct, questions

    expected = [e.response for e in questions(COUNT)]
    adapter = [is_correct(text, want) for text, want in zip(_answers(vllm_lm, "demo"), expected, strict=True)]
    base = [is_correct(text, want) for text, want in zip(_answers(vllm_lm, None), expected, strict=True)]
    assert sum(adapter) >= COUNT - 1 and not any(base), (adapter, base)
