"""Adapters added and removed at run time, as DJL Serving's management API drives them.

DJL turns ``POST /adapters``, ``.../update`` and ``DELETE /adapters/{name}`` into one Input each for the
entry module's ``register_adapter`` / ``update_adapter`` / ``unregister_adapter`` (djl-serving
``PyAdapter``): properties ``handler`` (the function's name), ``name``, ``alias`` and ``src`` (not for
unregister), and the options (``preload``, ``pin``, as ``"true"`` / ``"false"``) as content entries. The
function is looked up on the module by name when the call comes, and runs where the mode runs ``handle``
(awaited on the loop in async mode, on the one worker thread in sync mode); its Output is read as a
request's. Like DJL, an update re-sends the adapter's src and options with the new ones laid over them.

The registry also answers which inference component names are adapters (the runtime API's
``InferenceComponentName``): one registered here, or one the handler's model info lists (the package's
own adapters), asked again whenever a name is not known yet.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_endpoint.contract.errors import error_body
from lora_endpoint.handler.adapters import ADAPTER_NAME_RE

from .djl_io import JSON, Answer
from .endpoint import EndpointState, NotReady

log = logging.getLogger("lora_endpoint.local")

REGISTER, UPDATE, UNREGISTER = "register_adapter", "update_adapter", "unregister_adapter"
OPTIONS = ("preload", "pin")


def djl_bool(value: bool) -> str:
    """An option as DJL passes it on (a query parameter's text; ``Boolean.parseBoolean`` reads it back)."""
    return "true" if value else "false"


@dataclass(frozen=True)
class Registration:
    """What DJL keeps of an adapter: its name, alias (the name when none was given), src and options."""

    name: str
    src: str
    alias: str
    options: dict[str, str] = field(default_factory=dict)


def adapter_input(djl: Any, function: str, registration: Registration) -> Any:
    """The Input DJL's ``PyAdapter`` builds for ``function``."""
    properties = {"handler": function, "name": registration.name, "alias": registration.alias}
    if function != UNREGISTER:
        properties["src"] = registration.src
        content = [(key, value.encode("utf-8")) for key, value in registration.options.items()]
    else:
        content = []
    return djl.Input(properties, content)


def local_error(status: int, error_type: str, message: str) -> Answer:
    """An error answered here, before any entry function runs, in the project's JSON error body."""
    return Answer(status, {"Content-Type": JSON}, json.dumps(error_body(status, error_type, message)).encode())


class AdapterRegistry:
    """The adapters registered through the local routes, and the adapter names the endpoint serves."""

    def __init__(self, state: EndpointState, *, base_component: str) -> None:
        self.state = state
        self.served = state.served
        self.base_component = base_component
        self.registrations: dict[str, Registration] = {}
        self._served_names: set[str] = set()

    # --- DJL's management calls --------------------------------------------------------------------
    async def register(self, registration: Registration) -> Answer:
        answer = await self._call(REGISTER, registration)
        if answer.status < 300:
            self.registrations[registration.name] = registration
            self._served_names.add(registration.name)
        return answer

    async def update(self, name: str, alias: str | None, src: str | None, options: dict[str, str]) -> Answer:
        """DJL's update: the adapter's current src and options, with the given ones laid over them."""
        current = self.registrations.get(name) or self._packaged(name)
        if current is None and src is None:
            return local_error(404, "unknown_adapter", f"The adapter {alias or name} was not found")
        registration = Registration(
            name=name, src=src if src is not None else current.src if current else "",
            alias=alias or (current.alias if current else name),
            options={**(current.options if current else {}), **options})
        answer = await self._call(UPDATE, registration)
        if answer.status < 300:
            self.registrations[name] = registration
            self._served_names.add(name)
        return answer

    async def unregister(self, name: str, alias: str | None) -> Answer:
        current = self.registrations.get(name)
        registration = Registration(name=name, src=current.src if current else "",
                                    alias=alias or (current.alias if current else name))
        answer = await self._call(UNREGISTER, registration)
        if answer.status < 300:
            self.registrations.pop(name, None)
            self._served_names.discard(name)
        return answer

    def _packaged(self, name: str) -> Registration | None:
        """An adapter of the package itself (``adapters/<name>/``): DJL registered it at start with that src."""
        if not ADAPTER_NAME_RE.match(name):  # e.g. "..": no folder of the package is meant
            return None
        folder = Path(self.served.model_dir) / "adapters" / name
        return Registration(name=name, src=str(folder), alias=name) if folder.is_dir() else None

    async def _call(self, function: str, registration: Registration) -> Answer:
        target = self.served.entry_function(function)
        entry = self.served.entry_name
        if target is None:
            # DJL's getattr would raise, answered as a 424 "invoke_handler failure"; say what is missing
            return local_error(501, "not_implemented",
                               f"{entry} defines no {function}(inputs): this package cannot add, update or remove "
                               "adapters at run time (DJL would fail the call with a 424)")
        if inspect.iscoroutinefunction(target) != self.served.async_mode:
            kind, mode = ("a plain function", "async") if self.served.async_mode else ("an async function", "sync")
            return local_error(500, "internal_error",
                               f"{entry}'s {function} is {kind} but the package runs in DJL's {mode} mode, "
                               "where DJL would fail every call to it")
        inputs = adapter_input(self.served.djl, function, registration)
        return await self.state.frontend.call(target, inputs, f"adapter {registration.name!r}")

    # --- inference components -------------------------------------------------------------------------
    async def is_adapter(self, name: str) -> bool:
        """True when ``name`` is an adapter this endpoint serves (model info is asked again on a miss)."""
        if name in self._served_names:
            return True
        self._served_names |= await self.served_adapter_names()
        return name in self._served_names

    async def served_adapter_names(self) -> set[str]:
        """The names model info lists under ``adapters`` (none when it does not answer)."""
        try:
            answer = await self.state.model_info()
        except NotReady:
            return set()
        try:
            listed = json.loads(answer.body).get("adapters") if answer.status < 300 else None
        except (ValueError, UnicodeDecodeError, AttributeError):
            listed = None
        if not isinstance(listed, list):
            log.warning("model info did not list adapters (status %d)", answer.status)
            return set()
        return {item["name"] for item in listed if isinstance(item, dict) and isinstance(item.get("name"), str)}
