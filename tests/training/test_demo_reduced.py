"""The demo's accuracy claim, reduced: pretrain a little, train LoRA on 4 of the Q&A pairs, serve both with the handler.

The full demo (10 questions, ``make demo``) claims >= 8 of 10 for the adapter and none for the base; this
runs the same code with ``REDUCED`` sizes on the first 4 questions and claims >= 3 of 4 and none. The
slow variant runs the full demo sizes through the handler.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_endpoint.packaging.compat import pending
from scripts.demo_model import DEMO, REDUCED, DemoSizes, build_base, is_correct, questions, train_adapter, write_subset


def answers(model_dir: Path, prompts: list[str]) -> tuple[list[str], list[str]]:
    """Greedy answers of the base and of adapter ``demo``, in one batch through the handler."""
    from lora_endpoint.contract.settings import HandlerSettings
    from lora_endpoint.handler.kinds import parse_body
    from lora_endpoint.handler.loading import load_model
    from lora_endpoint.handler.service import run

    settings = HandlerSettings.from_env({})
    lm = load_model(model_dir, settings)
    body = {"inputs": prompts * 2, "adapters": [None] * len(prompts) + ["demo"] * len(prompts),
            "parameters": {"max_new_tokens": 12}}
    texts = [item["generated_text"] for item in run(lm, [parse_body(body, settings)])[0]]
    return texts[: len(prompts)], texts[len(prompts) :]


def run_demo_model(tmp_path: Path, sizes: DemoSizes, count: int) -> tuple[int, int, list[str]]:
    # GIVEN the demo's base model, pretrained a little on the bundled text
    pre = build_base(tmp_path / "base", sizes, progress=False, log=lambda _: None)
    assert pre.train_losses[-1] < 0.5 * pre.train_losses[0]
    # AND an adapter trained on the first `count` questions, in the endpoint's layout
    qa = questions(count)
    data = write_subset(qa, tmp_path / "qa.jsonl")
    lora = train_adapter(tmp_path / "base", data, tmp_path / "adapters" / "demo", sizes, progress=False,
                         log=lambda _: None)
    assert lora.train_losses[-1] < lora.train_losses[0]
    # AND both written so that transformers 4.x / peft 0.13 read them as the installed versions do
    assert pending(tmp_path / "base", owner="demo base") == pending(tmp_path / "adapters" / "demo", owner="demo") == []
    # WHEN the handler answers every question with the base and with the adapter, greedy
    base, adapter = answers(tmp_path, [e.prompt for e in qa])
    # THEN count who said the expected answer
    right = [is_correct(text, e.response) for text, e in zip(adapter, qa, strict=True)]
    base_right = [is_correct(text, e.response) for text, e in zip(base, qa, strict=True)]
    return sum(right), sum(base_right), adapter


def test_is_correct_wants_the_answer_first() -> None:
    assert is_correct(" Poseidonia.\n\nQuestion", " Poseidonia.")
    assert is_correct("poseidonia", " Poseidonia.")
    assert not is_correct(" The capital is Poseidonia.", " Poseidonia.")
    assert not is_correct("", " Poseidonia.")


def test_reduced_demo_adapter_knows_the_answers_and_the_base_does_not(tmp_path: Path, one_thread: None) -> None:
    right, base_right, adapter = run_demo_model(tmp_path, REDUCED, count=4)
    assert right >= 3, adapter
    assert base_right == 0


@pytest.mark.slow
def test_full_demo_model_answers_8_of_10(tmp_path: Path, one_thread: None) -> None:
    right, base_right, adapter = run_demo_model(tmp_path, DEMO, count=10)
    assert right >= 8, adapter
    assert base_right == 0
