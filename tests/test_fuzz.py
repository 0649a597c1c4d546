"""A small seeded run of scripts/fuzz.py in the default suite: no client input reaches a 5xx, every
error is JSON, no stream ends in an error record, the endpoint keeps answering. The large run is
``python scripts/fuzz.py --cases 20000 --record`` (docs/fuzzing.md)."""

from __future__ import annotations

from pathlib import Path

from scripts import fuzz


def test_a_small_fuzz_of_the_handler_and_the_local_routes_finds_nothing(tmp_path: Path) -> None:
    report, _ = fuzz.fuzz(250, seed=11, target="both", batch=4, work=tmp_path)
    assert report.failures == []
    answered = sum(report.statuses.values())
    # handle_sync(), handle_sync() in batches, the async handle() and the routes: every case answered
    assert answered == 250 * 4
    assert sum(n for (_, status), n in report.statuses.items() if status == 200) > 50


def test_the_checks_catch_what_they_are_for() -> None:
    assert fuzz.problem_with(500, "application/json", b'{"code": 500, "type": "internal_error"}')
    assert fuzz.problem_with(400, "text/plain", b"Internal Server Error")
    assert fuzz.problem_with(424, "application/json", b'{"OriginalStatusCode": 500, "OriginalMessage": "x"}')
    assert fuzz.problem_with(200, "application/jsonlines", b'{"token": {}}\n{"error": {"type": "internal_error"}}\n')
    assert fuzz.problem_with(400, "application/json", b'{"code": 400, "type": "invalid_request"}') is None
    # DJL async mode's own error body: the machine type leads the error string
    assert fuzz.problem_with(404, "application/json", b'{"code": 404, "error": "unknown_adapter: x"}') is None
    assert fuzz.problem_with(404, "application/json", b'{"code": 404, "error": "no type here"}')
    assert fuzz.problem_with(404, "application/json", b'{"code": 400, "error": "invalid_request: x"}')
