"""The error shapes: DJL async mode's body turns back into the project's."""

from __future__ import annotations

import pytest

from lora_endpoint.contract.errors import error_body, full_error_body


@pytest.mark.parametrize(("body", "expected"), [
    ({"code": 404, "error": "unknown_adapter: adapter 'x' is not served"},
     error_body(404, "unknown_adapter", "adapter 'x' is not served")),
    ({"code": 500, "error": "Async Inference Failure: boom"},
     error_body(500, "model_error", "Async Inference Failure: boom")),
    ({"code": 424, "error": "no type here"}, error_body(424, "model_error", "no type here")),
    ({"code": 500}, error_body(500, "model_error", "the model server failed to answer")),
    (error_body(400, "invalid_request", "m"), error_body(400, "invalid_request", "m")),
])
def test_full_error_body(body, expected) -> None:
    assert full_error_body(body, expected["code"]) == expected
