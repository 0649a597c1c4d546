"""The adapter management calls DJL makes: ``register_adapter``, ``update_adapter``, ``unregister_adapter``.

DJL's frontend (its ``PyAdapter``) sends them for every ``adapters/<name>`` at start-up when LoRA is
enabled, for the management API (``POST models/{m}/adapters``, ``.../update``, ``DELETE``) and for
SageMaker adapter inference components: properties ``name``, ``alias`` and ``src``; the options
(``preload``, ``pin``) as content entries with string values ``"true"`` / ``"false"``. This module turns
one such Input into a registry call and its answer; ``entry`` wraps it for DJL's async and sync modes.
"""

from __future__ import annotations

from typing import Any

from lora_endpoint.contract.errors import AdapterConflict, AdapterRejected, HandlerError, ModelNotReady, shown

from .loading import LoadedModel

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def option(inputs: Any, key: str, default: bool) -> bool:
    """A boolean option: a content entry (as DJL sends it), else a property of that name."""
    raw: Any = None
    contains = getattr(inputs, "contains_key", None)
    if callable(contains) and contains(key):
        raw = inputs.get_as_string(key)
    elif inputs.get_property(key) is not None:
        raw = inputs.get_property(key)
    if raw is None:
        return default
    value = str(raw).strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise AdapterRejected(f"{key} must be true or false, got {shown(raw)}", param=key)


def _registry(model: LoadedModel | None) -> Any:
    if model is None:
        raise ModelNotReady("the model is still loading; register adapters once it answers /ping")
    if model.registry is None:
        raise AdapterConflict(
            f"this endpoint serves adapter {shown(model.merged_adapter)} merged into the base (LORA_MERGE); it "
            "cannot take other adapters", param="name")
    return model.registry


def _name(inputs: Any) -> str:
    name = inputs.get_property("name")
    if not name:
        raise AdapterRejected("name is required", param="name")
    return str(name)


def _packaged_failure(model: LoadedModel, name: str) -> None:
    """LMI registers every ``adapters/<name>`` at start-up, also one that failed to load: say why."""
    reason = model.failed_adapters.get(name)
    if reason is not None:
        raise AdapterRejected(f"adapter {shown(name)} failed to load at start-up: {reason}", param="src")


def register(model: LoadedModel | None, inputs: Any) -> dict[str, Any]:
    """``register_adapter``: validate and serve the adapter at ``src`` under ``name`` (blocking)."""
    registry = _registry(model)
    assert model is not None
    name = _name(inputs)
    _packaged_failure(model, name)
    described: dict[str, Any] = registry.register(
        name, inputs.get_property("src") or "", alias=inputs.get_property("alias"),
        preload=option(inputs, "preload", True), pin=option(inputs, "pin", False))
    return {"message": f"Adapter {described['alias']} registered", "adapter": described}


def update(model: LoadedModel | None, inputs: Any) -> dict[str, Any]:
    """``update_adapter``: change ``preload`` / ``pin`` (``src`` cannot change in place)."""
    registry = _registry(model)
    preload = option(inputs, "preload", True) if _given(inputs, "preload") else None
    pin = option(inputs, "pin", False) if _given(inputs, "pin") else None
    described: dict[str, Any] = registry.update(_name(inputs), src=inputs.get_property("src") or None,
                                                preload=preload, pin=pin)
    return {"message": f"Adapter {described['alias']} updated", "adapter": described}


def unregister(model: LoadedModel | None, inputs: Any) -> dict[str, Any]:
    """``unregister_adapter``: stop serving ``name``, wait for its requests, free it (blocking)."""
    described: dict[str, Any] = _registry(model).unregister(_name(inputs))
    return {"message": f"Adapter {described['alias']} unregistered", "adapter": described}


def _given(inputs: Any, key: str) -> bool:
    contains = getattr(inputs, "contains_key", None)
    return bool(callable(contains) and contains(key)) or inputs.get_property(key) is not None


CALLS = {"register_adapter": register, "update_adapter": update, "unregister_adapter": unregister}
__all__ = ["CALLS", "HandlerError", "option", "register", "unregister", "update"]
