"""One contract: the JSON schemas (API Gateway's request models, the local routes) and the handler's
parsers. A schema never refuses what the handler accepts - so the gateway turns no valid request away -
and the handler refuses everything a schema refuses, plus what only it can check (settings caps, token
counts, adapters). Checked over the README's examples, real clients' bodies and a seeded fuzz."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.api import request_schemas, schema_errors
from lora_endpoint.contract.errors import HandlerError
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.handler.body import parse_json
from lora_endpoint.handler.kinds import parse_body
from scripts import fuzz
from tests.docs import doc

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = request_schemas(streaming=True)
SETTINGS = HandlerSettings.from_env({})
README_EXAMPLES = [json.loads(req) for req in
                   re.findall(r"<!-- example: \w+ -->\s*```json\n(.*?)```", doc("handler"), re.S)]
FIXTURES = [json.loads(p.read_text()) for p in sorted((ROOT / "tests" / "fixtures" / "requests").glob("*.json"))]


def shape(body: dict[str, Any]) -> str:
    """The schema of a body's shape, picked the way the handler dispatches."""
    for key, name in (("task", "Info"), ("messages", "ChatCompletion"), ("query", "Rag"), ("inputs", "Generate"),
                      ("prompt", "Simple")):
        if key in body:
            return name
    return "Generate"


def handler_accepts(body: dict[str, Any]) -> bool:
    try:
        parse_body(body, SETTINGS)
    except HandlerError:
        return False
    return True


@pytest.mark.parametrize("body", README_EXAMPLES + FIXTURES + fuzz.SEEDS)
def test_documented_and_real_client_requests_pass_both(body) -> None:
    assert schema_errors(body, SCHEMAS[shape(body)]) == []
    assert handler_accepts(body)


def test_schemas_and_handler_agree_over_a_fuzz() -> None:
    compared = accepted = 0
    for case in fuzz.cases(1500, seed=7):
        try:
            body = parse_json(case.body, SETTINGS.max_payload_bytes)
        except HandlerError:
            continue  # not JSON, or over a bound: both refuse it before any schema
        compared += 1
        schema_ok = not schema_errors(body, SCHEMAS[shape(body)])
        handler_ok = handler_accepts(body)
        accepted += handler_ok
        # a schema refusing what the handler takes would turn valid requests away at the gateway
        assert schema_ok or not handler_ok, (case.number, body)
    assert compared > 1000 and accepted > 100  # both directions were exercised
