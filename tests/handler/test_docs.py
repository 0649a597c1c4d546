"""docs/handler.md's request examples run through handle(); their responses have the documented fields and types."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest

from lora_endpoint.contract.settings import HandlerSettings, env_var
from lora_endpoint.handler import entry
from tests.docs import doc

HANDLER_DOC = doc("handler")  # the request examples and the settings table
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\s*```json\n(.*?)```\s*```json\n(.*?)```", re.S)
EXAMPLES = {name: (json.loads(req), json.loads(resp)) for name, req, resp in EXAMPLE.findall(HANDLER_DOC)}
# Keys that exist only on a GPU host.
GPU_ONLY = {"gpu_allocated_bytes", "gpu_reserved_bytes"}


def kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return type(value).__name__


def assert_same_shape(got: Any, documented: Any, where: str = "$") -> None:
    if documented is None or got is None:
        return  # null in the docs stands for "may be null"
    assert kind(got) == kind(documented), f"{where}: {kind(got)} != documented {kind(documented)}"
    if isinstance(documented, dict):
        assert set(got) == set(documented) - (GPU_ONLY - set(got)), f"{where}: keys {sorted(got)}"
        for key in got:
            assert_same_shape(got[key], documented[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and got:
        for index, item in enumerate(got):
            assert_same_shape(item, documented[min(index, len(documented) - 1)], f"{where}[{index}]")


def test_readme_has_an_example_for_every_shape() -> None:
    assert {"generate", "generate_list", "simple", "rag", "chat", "info"} <= set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_readme_example_runs(name, djl, tiny_model_dir, monkeypatch) -> None:
    from djl_python.inputs import Input, request

    monkeypatch.setattr(entry, "_runtime", entry._Runtime())
    entry.handle_sync(Input({"model_dir": str(tiny_model_dir)}))
    body, documented = EXAMPLES[name]
    # The README's adapter is called support-bot; the tiny model's is alpha.
    raw = json.dumps(body).replace('"support-bot"', '"alpha"')
    out = entry.handle_sync(request(raw, Content_Type="application/json"))
    assert out.code == 200, out.body()
    assert_same_shape(out.json(), documented)


def test_every_setting_is_documented() -> None:
    for field in dataclasses.fields(HandlerSettings):
        assert f"| `{env_var(field.name)}` |" in HANDLER_DOC, f"{env_var(field.name)} is not in docs/handler.md"


def test_readme_operations_lists_every_metric_with_its_unit_and_prometheus_name() -> None:
    from lora_endpoint.contract import metrics

    operations = doc("operations")
    for metric in metrics.CATALOG:
        suffix = "_total" if metric.prometheus_type == "counter" else ""
        assert f"| `{metric.name}` | {metric.unit} |" in operations, metric.name
        assert f"`{metric.prometheus}{suffix}` ({metric.prometheus_type})" in operations, metric.name
