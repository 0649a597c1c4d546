"""Round trip: build -> safe_extract -> model_fn -> predict_fn equals serving the source folders."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_endpoint.packaging import BuildOptions, build, safe_extract

PROMPTS = ("The quick brown fox", "Question: what is the capital of France? Answer:")


def _generate(model: Any, adapter: str | None) -> list[Any]:
    from lora_endpoint.handler.entry import input_fn, output_fn, predict_fn

    answers = []
    for prompt in PROMPTS:
        parameters = {"max_new_tokens": 12, "do_sample": False, "details": True}
        body = {"inputs": prompt, "parameters": parameters, "adapters": adapter}
        prediction = predict_fn(input_fn(json.dumps(body), "application/json"), model)
        answers.append(json.loads(output_fn(prediction, "application/json")))
    return answers


def test_extracted_artifact_serves_exactly_like_the_source_folders(
    options_for: Callable[..., BuildOptions], tiny_src: Path, tmp_path: Path
) -> None:
    from lora_endpoint.handler.entry import model_fn

    # GIVEN an artifact built from the source folders, extracted with the safe extractor
    result = build(options_for())
    extracted = safe_extract(result.path, tmp_path / "model")
    # WHEN both are loaded by the handler and asked the same greedy questions, per adapter
    source_model = model_fn(str(tiny_src))
    packaged_model = model_fn(str(extracted))
    outputs = {}
    for adapter in (None, "alpha", "beta"):
        expected = _generate(source_model, adapter)
        actual = _generate(packaged_model, adapter)
        # THEN every adapter's outputs are identical
        assert actual == expected, adapter
        outputs[adapter] = expected
    assert outputs["alpha"] != outputs[None] and outputs["beta"] != outputs["alpha"], "adapters really route"
