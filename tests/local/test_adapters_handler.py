"""Adapters at run time end to end: the local routes, the runtime API's InferenceComponentName and
lora_endpoint/commands/adapters.py --local, through the repository's handler serving the tiny model (both DJL modes)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from lora_endpoint.commands.adapters import main as adapters_main

from .conftest import Running

GREEDY = {"max_new_tokens": 8, "do_sample": False}


@pytest.fixture(scope="module")
def pool(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapters for the tiny base outside its model dir: ``gamma``, another one, one of a rank over the
    handler's default cap and one without weights."""
    from lora_endpoint.contract.settings import HandlerSettings
    from scripts.tiny_model import build_lora_adapter

    root = tmp_path_factory.mktemp("pool")
    build_lora_adapter(tiny_model_dir / "base", root / "gamma", seed=900, scale=4.0)
    build_lora_adapter(tiny_model_dir / "base", root / "other", seed=901, scale=4.0)
    build_lora_adapter(tiny_model_dir / "base", root / "wide", seed=902, r=HandlerSettings().max_lora_rank + 1)
    shutil.copytree(root / "gamma", root / "empty")
    (root / "empty" / "adapter_model.safetensors").unlink()
    return root


@pytest.fixture
def live(server: Running) -> Iterator[Running]:
    """The session server; whatever a test registered is unregistered after it (other tests list alpha, beta)."""
    yield server
    for name in ("gamma", "other", "wide", "empty"):
        httpx.delete(f"{server.url}/adapters/{name}", timeout=60)


def names(server: Running) -> list[str]:
    return [m["id"] for m in httpx.get(server.url + "/v1/models", timeout=60).json()["data"]]


def generated(runtime: Any, body: dict[str, Any], **kwargs: Any) -> str:
    answer = runtime.invoke_endpoint(EndpointName="lora-local", ContentType="application/json",
                                     Body=json.dumps({"inputs": "Hello there", "parameters": GREEDY, **body}), **kwargs)
    return str(json.loads(answer["Body"].read())["generated_text"])


def test_a_registered_adapter_answers_by_its_component_and_goes_away(live: Running, runtime: Any, pool: Path) -> None:
    # GIVEN a new adapter registered while serving
    response = httpx.post(live.url + "/adapters", json={"name": "gamma", "src": str(pool / "gamma")}, timeout=120)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "Adapter gamma registered"
    assert response.json()["adapter"]["origin"] == "registered"
    models = httpx.get(live.url + "/v1/models", timeout=60).json()["data"]
    base = models[0]["id"]
    assert {"alpha", "beta", "gamma"} <= {m["id"] for m in models[1:]}
    assert all(m["parent"] == base for m in models[1:])
    # WHEN it is named as an inference component THEN it answers as when the body names it
    by_component = generated(runtime, {}, InferenceComponentName="gamma")
    assert by_component == generated(runtime, {"adapters": "gamma"})
    assert by_component != generated(runtime, {}, InferenceComponentName="lora-local-base")
    assert generated(runtime, {}, InferenceComponentName="lora-local-base") == generated(runtime, {})
    # WHEN it is unregistered THEN its component is unknown and the body's name a 404
    gone = httpx.delete(live.url + "/adapters/gamma", timeout=120)
    assert gone.status_code == 200 and gone.json()["status"] == "Adapter gamma unregistered"
    with pytest.raises(ClientError) as caught:
        generated(runtime, {}, InferenceComponentName="gamma")
    assert caught.value.response["Error"]["Code"] == "ValidationError"
    with pytest.raises(ClientError) as caught:
        generated(runtime, {"adapters": "gamma"})
    assert caught.value.response["OriginalStatusCode"] == 404
    again = httpx.delete(live.url + "/adapters/gamma", timeout=60)
    assert again.status_code == 404 and again.json()["type"] == "unknown_adapter"


@pytest.mark.parametrize(("name", "src", "status", "kind"), [
    ("wide", "wide", 400, "invalid_adapter"),      # rank over the cap
    ("empty", "empty", 400, "invalid_adapter"),    # no weights
    ("missing", "nowhere", 400, "invalid_adapter"),
    ("../gamma", "gamma", 400, "invalid_adapter"),
])
def test_bad_sources_are_refused_and_nothing_stays(live: Running, pool: Path, name: str, src: str, status: int,
                                                   kind: str) -> None:
    response = httpx.post(live.url + "/adapters", json={"name": name, "src": str(pool / src)}, timeout=120)
    assert response.status_code == status, response.text
    assert response.json()["type"] == kind
    assert name not in names(live)


def test_same_name_other_src_is_409_and_update_pins(live: Running, pool: Path) -> None:
    assert httpx.post(live.url + "/adapters", json={"name": "gamma", "src": str(pool / "gamma")},
                      timeout=120).status_code == 200
    conflict = httpx.post(live.url + "/adapters", json={"name": "gamma", "src": str(pool / "other")}, timeout=120)
    assert conflict.status_code == 409 and conflict.json()["type"] == "adapter_conflict"
    pinned = httpx.post(live.url + "/adapters/gamma/update", json={"pin": True}, timeout=120)
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["adapter"]["pinned"] is True


def test_the_script_against_the_local_endpoint(live: Running, pool: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert adapters_main(["add", "gamma", str(pool / "gamma"), "--local", live.url]) == 0
    assert "Adapter gamma registered" in capsys.readouterr().out
    assert adapters_main(["list", "--local", live.url]) == 0
    assert any(line.split()[:2] == ["gamma", "adapter"] for line in capsys.readouterr().out.splitlines())
    assert adapters_main(["add", "wide", str(pool / "wide"), "--local", live.url]) == 1
    assert "invalid_adapter" in capsys.readouterr().err
    assert adapters_main(["remove", "gamma", "--local", live.url]) == 0
    assert "gamma" not in names(live)
