"""A stand-in entry module with run-time adapters, per the handler's contract (for the local routes' tests).

A package's ``model.py`` re-exports these: the async functions for ``option.async_mode=true``, the
``*_sync`` ones under DJL's names for sync mode. ``register_adapter`` / ``update_adapter`` /
``unregister_adapter`` read the Input DJL's ``PyAdapter`` builds (properties ``handler``, ``name``,
``alias``, ``src``; options as content) and answer as the handler does: the adapter's description, or
an error with its status (400 bad src, 404 unknown, 409 name taken with another src). ``handle``
answers model info, and otherwise echoes the adapter a request reached it with. Every Input is recorded
in ``CALLS`` for the tests to read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lora_endpoint.contract.errors import AdapterConflict, AdapterRejected, HandlerError, UnknownAdapter
from lora_endpoint.handler import djl_async, djl_sync
from lora_endpoint.handler.adapters import ADAPTER_CONFIG, ADAPTER_NAME_RE

MODEL_PY = {
    "async": "from tests.local.fake_adapter_entry import (handle, register_adapter, unregister_adapter,\n"
             "                                                   update_adapter)\n",
    "sync": "from tests.local.fake_adapter_entry import handle_sync as handle\n"
            "from tests.local.fake_adapter_entry import register_adapter_sync as register_adapter\n"
            "from tests.local.fake_adapter_entry import unregister_adapter_sync as unregister_adapter\n"
            "from tests.local.fake_adapter_entry import update_adapter_sync as update_adapter\n",
}
BASE = "fake-base"
PACKAGED = "packaged"
CALLS: list[dict[str, Any]] = []
ADAPTERS: dict[str, dict[str, Any]] = {}


def write_package(pkg: Path, mode: str) -> Path:
    """A package dir served by this module in DJL's ``mode`` (load it with ``allow_no_manifest``), with one
    adapter of its own, ``adapters/packaged/``."""
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "model.py").write_text(MODEL_PY[mode])
    async_mode = "true" if mode == "async" else "false"
    (pkg / "serving.properties").write_text(f"engine=Python\noption.async_mode={async_mode}\n")
    (pkg / "adapters" / PACKAGED).mkdir(parents=True)
    (pkg / "adapters" / PACKAGED / ADAPTER_CONFIG).write_text("{}")
    return pkg


def _record(inputs: Any) -> dict[str, Any]:
    content = getattr(inputs, "content", [])
    call = {"properties": dict(inputs.get_properties()), "content": {k: v.decode() for k, v in content}}
    CALLS.append(call)
    return call


def _init() -> None:
    CALLS.clear()
    ADAPTERS.clear()
    ADAPTERS[PACKAGED] = {"src": "/model/adapters/packaged", "alias": PACKAGED, "preload": "true", "pin": "false"}


def _described(name: str) -> dict[str, Any]:
    return {"name": name, "rank": 8, "alpha": 16.0, "target_modules": ["q_proj"], **ADAPTERS[name]}


def _register(inputs: Any, *, update: bool) -> dict[str, Any]:
    call = _record(inputs)
    props, options = call["properties"], call["content"]
    name, src = props.get("name", ""), props.get("src", "")
    if not ADAPTER_NAME_RE.match(name):
        raise AdapterRejected(f"adapter name {name!r} is not a safe identifier", param="name")
    if update and name not in ADAPTERS:
        raise UnknownAdapter(f"adapter {name!r} is not registered")
    if not src.startswith("s3://") and not (Path(src) / ADAPTER_CONFIG).is_file():
        raise AdapterRejected(f"adapter {name!r}: src is not an adapter folder (no {ADAPTER_CONFIG})", param="src")
    known = ADAPTERS.get(name)
    if not update and known is not None and known["src"] != src:
        raise AdapterConflict(f"adapter {name!r} is registered with another src; unregister it first")
    ADAPTERS[name] = {"src": src, "alias": props.get("alias"), **options}
    return {"message": f"Adapter {props.get('alias')} {'updated' if update else 'registered'}",
            "adapter": _described(name)}


def _unregister(inputs: Any) -> dict[str, Any]:
    props = _record(inputs)["properties"]
    name = props.get("name", "")
    if ADAPTERS.pop(name, None) is None:
        raise UnknownAdapter(f"adapter {name!r} is not registered")
    return {"message": f"Adapter {props.get('alias')} unregistered", "adapter": {"name": name}}


def _answer(inputs: Any) -> dict[str, Any]:
    body = json.loads(inputs.get_as_bytes() or b"{}")
    if body.get("task") == "info":
        return {"base_model": BASE, "context_length": 128,
                "adapters": [{"name": name, "rank": 8, "alpha": 16.0, "target_modules": ["q_proj"]}
                             for name in ADAPTERS]}
    adapter = inputs.get_property("X-Amzn-SageMaker-Adapter-Identifier") or body.get("adapters")
    if adapter is not None and adapter not in ADAPTERS:
        raise UnknownAdapter(f"adapter {adapter!r} is not served here")
    return {"generated_text": "ok", "adapter": adapter}


# --- async mode ------------------------------------------------------------------------------------
async def handle(inputs: Any) -> Any:
    from djl_python import Output

    if inputs.is_empty():
        _init()
        return None
    _record(inputs)
    try:
        return djl_async.answer_output(Output, _answer(inputs))
    except HandlerError as err:
        return djl_async.error_output(Output, err)


async def _async(kind: str, inputs: Any) -> Any:
    from djl_python import Output

    try:
        result = _unregister(inputs) if kind == "unregister" else _register(inputs, update=kind == "update")
    except HandlerError as err:
        return djl_async.error_output(Output, err)
    return djl_async.answer_output(Output, result)


async def register_adapter(inputs: Any) -> Any:
    return await _async("register", inputs)


async def update_adapter(inputs: Any) -> Any:
    return await _async("update", inputs)


async def unregister_adapter(inputs: Any) -> Any:
    return await _async("unregister", inputs)


# --- sync mode -------------------------------------------------------------------------------------
def handle_sync(inputs: Any) -> Any:
    from djl_python import Output

    if inputs.is_empty():
        _init()
        return None
    _record(inputs)
    try:
        return Output().add_as_json(_answer(inputs))
    except HandlerError as err:
        return djl_sync.error_output(Output, err)


def _sync(kind: str, inputs: Any) -> Any:
    from djl_python import Output

    try:
        result = _unregister(inputs) if kind == "unregister" else _register(inputs, update=kind == "update")
    except HandlerError as err:
        return djl_sync.error_output(Output, err)
    return Output().add_as_json(result)


def register_adapter_sync(inputs: Any) -> Any:
    return _sync("register", inputs)


def update_adapter_sync(inputs: Any) -> Any:
    return _sync("update", inputs)


def unregister_adapter_sync(inputs: Any) -> Any:
    return _sync("unregister", inputs)
