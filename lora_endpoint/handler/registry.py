"""Adapters at run time: registered, kept in host memory, resident on the device - and moved between them.

Three tiers, as vLLM and LMI have them:

- **registered** (``entries``): validated by the same checks as ``lora_endpoint.packaging build`` (read_adapter,
  rank cap, target modules and weight shapes against the loaded base, finite weights, vocabulary, base
  name), its files on local disk (downloaded once when ``src`` is ``s3://``). Requests may name it.
- **host** (at most ``max_cpu_loras``): its peft config and weights read into host memory.
- **device** (at most ``max_loras``): loaded in the model's LoRA layers; ``lm.resident`` lists these,
  and only these are routed to.

A request holds a ``Lease`` on its adapters from before it is submitted until the engine is done with it
(``Engine.submit(on_release=...)``). Taking the lease reads the weights into host memory if needed (on the
caller's thread, never the engine's) and makes them resident, evicting the least recently used adapters
that no lease holds and nobody pinned; a request whose adapters cannot get a slot waits for one until its
deadline. Because every adapter of a submitted request is resident and held, the engine never waits for an
adapter and never runs a row with a missing one.

Moving an adapter onto the device does not stop generation for the time peft takes to add it: when the
adapter only fills LoRA layers the model already has, peft adds it on a short-lived thread of its own
while the engine keeps stepping (the engine's batched LoRA path reads only the factors it copied, never
peft's layers), the new batched factors are stacked there too, and the engine swaps them in between two
steps (``Engine.between_steps``). Evicting runs between two steps too (peft's delete is a few ms).
Adapters that need new modules wrapped, or peft's own mixed-batch path, are added between steps.

Unregistering stops new requests at once (404), waits for the leases held on the adapter, then frees it.
Just-in-time adapters (``LORA_ADAPTER_JIT_PREFIX``) are registered on first use from ``<prefix>/<name>/``;
names are safe identifiers (no ``/``, no leading ``.``), so they cannot leave the prefix.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lora_endpoint.contract.errors import (
    AdapterConflict,
    AdapterRejected,
    InvalidRequest,
    ModelOverloaded,
    ServiceUnavailable,
    UnknownAdapter,
    shown,
)

from . import adapter_checks, attach, lora_batch
from .adapter_weights import check_adapter_weights, tensor_shapes
from .adapters import SAFETENSORS_WEIGHTS, AdapterError, AdapterInfo, check_unmerged, read_adapter
from .threads import on_own_thread

log = logging.getLogger("lora_endpoint.handler")

PACKAGE, REGISTERED, JIT = "package", "registered", "jit"
MAX_ADAPTER_FILES = 1000  # files one downloaded adapter may have
MISSING_TTL_S = 30.0  # a just-in-time name found missing is not looked up again for this long
MAX_SLOT_WAIT_S = 60.0  # longest wait for a device slot when the request has no deadline
STACK_BUDGET_S = 0.002  # engine time per step spent stacking a new adapter set's factors


class _Missing(AdapterRejected):
    """``src`` does not exist (a just-in-time name that is not under the prefix)."""


@dataclass
class Entry:
    """One registered adapter."""

    info: AdapterInfo
    src: str
    alias: str
    origin: str
    pin: bool = False
    preload: bool = True
    owned: Path | None = None  # a download folder this registry made: removed with the adapter
    tokenizer: Any = None
    host: tuple[Any, dict[str, Any]] | None = None  # peft config and weights in host memory
    users: int = 0  # leases held on it
    removing: bool = False
    abandoned: bool = False  # unregister stopped waiting for its users: the last one frees it
    used_at: float = 0.0
    loading: threading.Lock = field(default_factory=threading.Lock)  # one host read at a time

    def describe(self, resident: bool) -> dict[str, Any]:
        """What model info and the registration answer say about it (no paths)."""
        return {**self.info.describe(), "alias": self.alias, "origin": self.origin, "pinned": self.pin,
                "resident": "device" if resident else "host" if self.host is not None else "disk"}


@dataclass
class RegistryStats:
    """Counters for operators and the benchmark."""

    registered: int = 0
    unregistered: int = 0
    host_loads: int = 0  # weights read from disk into host memory
    device_loads: int = 0  # adapters moved onto the device
    evictions: int = 0  # adapters moved off the device to make room
    host_evictions: int = 0
    jit_loads: int = 0
    last_device_load_ms: float = 0.0


class Lease:
    """A request's hold on its adapters: they stay registered, in host memory and on the device until
    ``release`` (idempotent)."""

    def __init__(self, registry: AdapterRegistry | None, names: tuple[str, ...]) -> None:
        self._registry = registry
        self.names = names

    def release(self) -> None:
        registry, self._registry = self._registry, None
        if registry is not None and self.names:
            registry._release(self.names)


class AdapterRegistry:
    """The adapters of one loaded model (see the module docstring). Thread-safe."""

    def __init__(self, lm: Any, base_model: Any, base_path: Path | None,
                 load_tokenizer: Callable[[str], Any]) -> None:
        from .adapter_weights import module_weight_shapes

        self.lm = lm
        self.settings = lm.settings
        self.stats = RegistryStats()
        self._cond = threading.Condition(threading.RLock())
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}
        self._device: collections.OrderedDict[str, None] = collections.OrderedDict()  # LRU first
        self._moving: set[str] = set()  # names on their way onto the device
        self._move_lock = threading.Lock()  # one change of the device set at a time
        self._name_locks: dict[str, threading.Lock] = {}
        self._missing: dict[str, float] = {}
        self._load_tokenizer = load_tokenizer
        # The base as the checks see it: read before peft wraps anything.
        self._shapes = module_weight_shapes(base_model)
        config = getattr(base_model, "config", None)
        vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
        self._vocab = vocab if isinstance(vocab, int) else None
        self._base_path = base_path
        names = {adapter_checks.last_part(lm.base_name)}
        recorded = getattr(config, "_name_or_path", None)
        if isinstance(recorded, str) and recorded:
            names.add(adapter_checks.last_part(recorded))
        if base_path is not None:
            names.add(base_path.resolve().name.lower())
        self._base_names = frozenset(names)

    # --- registering ------------------------------------------------------------------------------------
    def register(self, name: str, src: str, *, alias: str | None = None, preload: bool = True, pin: bool = False,
                 origin: str = REGISTERED) -> dict[str, Any]:
        """Validate the adapter at ``src`` (a folder, or an ``s3://`` prefix) and serve it as ``name``.

        Registering the same name from the same ``src`` again only applies ``preload`` / ``pin``. Raises
        ``AdapterRejected`` (400) for an adapter that cannot be served, ``AdapterConflict`` (409) for a
        name taken by another ``src`` or alias; nothing stays registered or downloaded after a refusal.
        """
        name, alias = self._checked_names(name, alias)
        if pin and not preload:
            raise AdapterRejected("an adapter cannot be pinned without being preloaded (pin needs preload)",
                                  param="pin")
        with self._name_lock(name):
            with self._cond:
                existing = self._entries.get(name)
                if existing is not None and not existing.removing:
                    if not _same_src(existing, src):
                        raise AdapterConflict(
                            f"adapter {shown(name)} is registered from another src; unregister it first to replace it",
                            param="name")
                    known = True
                else:
                    known = False
                    self._check_alias_free(name, alias)
            if known:
                return self.update(name, preload=preload, pin=pin)
            entry = self._new_entry(name, src, alias, origin, preload)
            with self._cond:
                self._entries[name] = entry
                self._aliases[alias] = name
                self._publish_names()
                self.stats.registered += 1
            log.info("adapter %r registered (%s, rank %d)", name, origin, entry.info.max_rank)
            try:
                if pin:
                    self.update(name, pin=True)
                elif preload:
                    self._engine_load(name, pin=False)
            except Exception:
                self._forget(name)
                raise
            return self.describe(name)

    def add_packaged(self, info: AdapterInfo) -> None:
        """An adapter found under the package's ``adapters/`` at start-up (raises ``AdapterError``)."""
        with self._cond:
            self._check_alias_free(info.name, info.name)
        entry = self._new_entry(info.name, str(info.path), info.name, PACKAGE, True, info=info)
        with self._cond:
            self._entries[info.name] = entry
            self._aliases[info.name] = info.name
            self._publish_names()

    def _new_entry(self, name: str, src: str, alias: str, origin: str, preload: bool,
                   info: AdapterInfo | None = None) -> Entry:
        packaged = info is not None
        folder, owned = self._fetch(name, src) if info is None else (info.path, None)
        try:
            # torch work (the weights scan) on a thread that ends with it: torch's thread pool belongs to the
            # thread that first computes and lives as long as it (see loading.load_model)
            info = on_own_thread(lambda: self._validate(name, folder, packaged=packaged), name="lora-check")
            tokenizer = self._own_tokenizer(info)
            entry = Entry(info=info, src=src, alias=alias, origin=origin, preload=preload, owned=owned,
                          tokenizer=tokenizer, used_at=time.monotonic())
            if preload:
                self._read_host(entry)
            return entry
        except AdapterError as err:
            self._discard(owned)
            if packaged:
                raise
            raise AdapterRejected(f"adapter {shown(name)}: {_caller_reason(err, folder)}", param="src") from None
        except Exception:
            self._discard(owned)
            raise

    def update(self, name: str, *, src: str | None = None, preload: bool | None = None,
               pin: bool | None = None) -> dict[str, Any]:
        """Change ``preload`` / ``pin`` of a registered adapter (a new ``src`` means unregister, register)."""
        entry = self._entry(name)
        if src is not None and src != entry.src:
            raise AdapterConflict(
                f"adapter {shown(entry.info.name)} cannot change its src in place; unregister it and register "
                "it again", param="src")
        if pin and preload is False:
            raise AdapterRejected("an adapter cannot be pinned without being preloaded (pin needs preload)",
                                  param="pin")
        if preload:
            entry.preload = True
            self._read_host(entry)
        elif preload is False:
            entry.preload = False
        if pin and not entry.pin:
            with self._cond:
                pinned = sum(1 for e in self._entries.values() if e.pin)
                if pinned >= self.settings.max_loras:
                    raise AdapterConflict(
                        f"all {self.settings.max_loras} device slots are pinned (LORA_MAX_LORAS); unpin or "
                        "unregister one first", param="pin")
            lease = self.acquire([entry.info.name], deadline=time.monotonic() + self.settings.time_budget_s + 10)
            try:
                self._engine_load(entry.info.name, pin=True)
                with self._cond:
                    entry.pin = True
            finally:
                lease.release()
        elif pin is False:
            entry.pin = False
        return self.describe(entry.info.name)

    def _engine_load(self, name: str, *, pin: bool) -> None:
        """An engine that keeps adapters itself (vLLM) loads it now; ``AdapterRejected`` if it refuses."""
        load = getattr(self.lm.engine, "load_adapter", None)
        if load is None:
            return
        try:
            load(name, pin=pin)
        except Exception as err:
            raise AdapterRejected(f"adapter {shown(name)}: vLLM refused it: {str(err)[:300]}", param="src") from None

    def unregister(self, name: str, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Stop serving ``name`` (new requests get 404 at once), wait for the requests holding it, free it.

        Past ``timeout_s`` (default: the time budget plus 10 s) the answer is 503 and the adapter is freed
        when its last request ends.
        """
        timeout_s = self.settings.time_budget_s + 10 if timeout_s is None else timeout_s
        with self._cond:
            entry = self._entry(name)
            real = entry.info.name
            if real == self.settings.default_adapter:
                raise AdapterConflict(f"adapter {shown(real)} is the default adapter (LORA_DEFAULT_ADAPTER); it "
                                      "cannot be unregistered", param="name")
            entry.removing = True
            self._publish_names()
            described = entry.describe(real in self._device)
            ended = self._cond.wait_for(lambda: entry.users == 0, timeout=timeout_s)
            if not ended:
                entry.abandoned = True  # the last lease released frees it
                raise ServiceUnavailable(
                    f"adapter {shown(real)} is no longer served; {entry.users} requests still use it and it is "
                    "freed when they end")
        self._free(entry)
        return described

    # --- serving ----------------------------------------------------------------------------------------
    def resolve(self, name: str) -> str:
        """The registered name a request's adapter name (or alias) means; just in time when configured;
        else 404 listing what is served."""
        with self._cond:
            real = self._aliases.get(name, name)
            entry = self._entries.get(real)
            if entry is not None and not entry.removing:
                return real
        if self.settings.adapter_jit_prefix and (entry is None):
            return self._just_in_time(name)
        available = ", ".join(self.names()) or "none (base model only)"
        raise UnknownAdapter(f"adapter {shown(name)} is not served here; available: {available}", param="adapters")

    def names(self) -> list[str]:
        with self._cond:
            return sorted(n for n, e in self._entries.items() if not e.removing)

    def describe(self, name: str) -> dict[str, Any]:
        with self._cond:
            entry = self._entry(name)
            return entry.describe(entry.info.name in self._device)

    def describe_all(self) -> list[dict[str, Any]]:
        with self._cond:
            return [e.describe(n in self._device) for n, e in sorted(self._entries.items()) if not e.removing]

    def acquire(self, names: Iterable[str], *, deadline: float | None = None) -> Lease:
        """Hold ``names`` for one request: in host memory and on the device until the lease is released.

        Waits (until ``deadline``) for a device slot when every slot holds a pinned adapter or one a running
        request uses; then 429 ``model_overloaded``.
        """
        wanted = tuple(sorted(set(names)))
        if not wanted:
            return Lease(None, ())
        if deadline is None:  # no time budget: still no longer than SageMaker waits for an answer
            deadline = time.monotonic() + MAX_SLOT_WAIT_S
        if len(wanted) > self.settings.max_loras:
            raise InvalidRequest(
                f"the request uses {len(wanted)} adapters; at most {self.settings.max_loras} can be served at once "
                "(LORA_MAX_LORAS)", param="adapters")
        with self._cond:
            entries = []
            for name in wanted:
                entry = self._entries.get(name)
                if entry is None or entry.removing:
                    raise UnknownAdapter(f"adapter {shown(name)} is not served here (it was unregistered)",
                                         param="adapters")
                entries.append(entry)
            for entry in entries:
                entry.users += 1
                entry.used_at = time.monotonic()
        lease = Lease(self, wanted)
        if self.lm.engine_kind == "vllm":  # vLLM keeps its own device and host slots
            return lease
        try:
            for entry in entries:
                self._read_host(entry)
            self._make_resident(wanted, deadline)
        except BaseException:
            lease.release()
            raise
        return lease

    def _release(self, names: tuple[str, ...]) -> None:
        freed = []
        with self._cond:
            for name in names:
                entry = self._entries.get(name)
                if entry is None:
                    continue
                entry.users -= 1
                if entry.users == 0 and entry.abandoned:
                    freed.append(entry)
            self._cond.notify_all()
        for entry in freed:  # unregister timed out waiting: free it now (off the engine thread)
            threading.Thread(target=self._free, args=(entry,), name="lora-unregister", daemon=True).start()

    # --- residency --------------------------------------------------------------------------------------
    def _make_resident(self, names: tuple[str, ...], deadline: float | None) -> None:
        while True:
            with self._cond:
                for name in names:
                    if name in self._device:
                        self._device.move_to_end(name)
                missing = [n for n in names if n not in self._device]
                if not missing:
                    return
                if any(n in self._moving for n in missing):  # another request is loading it: wait for that
                    self._wait(deadline, names)
                    continue
                free = self.settings.max_loras - len(self._device) - len(self._moving)
                evict: list[str] = []
                if free < len(missing):
                    candidates = [n for n in self._device if n not in names and self._evictable(n)]
                    pinned = sum(1 for n in self._device if self._entries.get(n) and self._entries[n].pin)
                    if pinned + len(missing) > self.settings.max_loras:  # waiting would not help
                        raise ServiceUnavailable(
                            f"{pinned} of the {self.settings.max_loras} device slots (LORA_MAX_LORAS) hold pinned "
                            f"adapters: no room for {', '.join(missing)}; unpin one or raise LORA_MAX_LORAS")
                    if len(candidates) < len(missing) - free:
                        self._wait(deadline, names)
                        continue
                    evict = candidates[: len(missing) - free]
                for name in evict:
                    del self._device[name]
                self._moving.update(missing)
            try:
                self._move(missing, evict)
            finally:
                with self._cond:
                    self._moving.difference_update(missing)
                    self._cond.notify_all()

    def _evictable(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is None or (entry.users == 0 and not entry.pin)

    def _wait(self, deadline: float | None, names: tuple[str, ...]) -> None:
        timeout = None if deadline is None else deadline - time.monotonic()
        if (timeout is not None and timeout <= 0) or not self._cond.wait(timeout=timeout):
            raise ModelOverloaded(
                f"no device slot for adapter(s) {', '.join(names)}: all {self.settings.max_loras} slots "
                "(LORA_MAX_LORAS) hold adapters that running requests use or that are pinned; retry")

    def _move(self, attach_names: list[str], evict: list[str]) -> None:
        """Attach ``attach_names`` (their host copies are held by the caller's lease) and evict ``evict``.

        peft may hold one adapter more than ``max_loras`` for a moment: the new ones are added before the
        evicted ones are deleted, so that the engine switches from the old set to the new in one step.
        """
        with self._move_lock:
            self._move_locked(attach_names, evict)

    def _move_locked(self, attach_names: list[str], evict: list[str]) -> None:
        started = time.perf_counter()
        lm = self.lm
        with self._cond:
            target = tuple(sorted(n for n in [*self._device, *attach_names] if n not in evict))
            entries = {n: self._entries[n] for n in attach_names}
        copies = {n: e.host or self._fail_host(n) for n, e in entries.items()}
        fast: dict[str, attach.FastAttach] = {}
        # the layout only: ``supported`` would stack the running set's factors here if they were stale
        if lm.engine is not None and lm.resident and lora_batch.for_model(lm.model, lm.resident).layout_reason is None:
            import copy

            fast = {n: attach.FastAttach(lm.model, n, copy.deepcopy(c[0]), entries[n].info, c[1])
                    for n, c in copies.items() if attach.FastAttach.applies(lm.model, c[0], c[1])}
        attached: list[str] = []

        def add() -> None:
            import torch

            with torch.inference_mode(False), torch.no_grad():
                for name in attach_names:
                    if name in fast:
                        fast[name].insert()
                    else:
                        config, weights = copies[name]
                        lm.model = attach.attach(lm.model, name, config, weights)
                    attached.append(name)

        def build() -> None:
            import torch

            with torch.inference_mode(False), torch.no_grad():
                lora_batch.prebuild(lm.model, target)

        def publish() -> None:
            lm.resident = target  # rows are routed to the new set from the next step on
            for name in attach.leftovers(lm.model, set(target)):
                attach.detach(lm.model, name)

        try:
            if len(fast) == len(attach_names):
                # A few dict writes between two steps; the model scanned for the new set beside the engine's
                # steps (Python only); its factors stacked on the engine thread a few layers between each two
                # steps (torch work on another thread would start a second OpenMP pool on the same cores and
                # slow the engine's steps, see loading.load_model); the switch between two more.
                self._on_model(add)
                batched = on_own_thread(lambda: lora_batch.for_model(lm.model, target), name="lora-attach")
                if batched.layout_reason is None:
                    steps = batched.stack_steps(warm=[lm.resident])
                    while not self._on_model(lambda: _advance(steps, STACK_BUDGET_S)):
                        pass
                self._on_model(publish)
            else:
                def all_at_once() -> None:
                    add()
                    build()
                    publish()

                self._on_model(all_at_once)
        except BaseException:
            def undo() -> None:
                for name in attached:
                    if name not in lm.resident:
                        attach.detach(lm.model, name)

            self._on_model(undo)
            with self._cond:
                for name in evict:  # still loaded and routed: they stay
                    self._device[name] = None
                    self._device.move_to_end(name, last=False)
            raise
        with self._cond:
            for name in attach_names:
                self._device[name] = None
            self.stats.device_loads += len(attach_names)
            self.stats.evictions += len(evict)
            self.stats.last_device_load_ms = (time.perf_counter() - started) * 1000
        log.info("adapters %s moved onto the device%s in %.0f ms", attach_names,
                 f" ({', '.join(evict)} evicted)" if evict else "", self.stats.last_device_load_ms)

    def _evict(self, names: list[str], kept: tuple[str, ...]) -> None:
        self.lm.resident = kept  # no row is routed to them from the next step on
        for name in names:
            attach.detach(self.lm.model, name)

    @staticmethod
    def _fail_host(name: str) -> Any:
        raise RuntimeError(f"adapter {name!r} has no host copy while held")

    def _on_model(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` where nothing else uses the model: between engine steps, or under the model lock on a
        thread of its own before the engine has started (no torch thread pool left behind)."""
        engine = self.lm.engine
        if engine is not None:
            return engine.between_steps(fn).result()

        def locked() -> Any:
            import torch

            with self.lm.lock, torch.inference_mode(False), torch.no_grad():
                return fn()

        return on_own_thread(locked, name="lora-attach")

    def preload_order(self) -> list[str]:
        """What start-up moves onto the device: pinned adapters first, then the rest by name, up to its slots."""
        if self.lm.engine_kind == "vllm":
            return []  # vLLM loads adapters on first use
        with self._cond:
            order = sorted(self._entries.values(), key=lambda e: (not e.pin, e.info.name))
            return [e.info.name for e in order][: self.settings.max_loras]

    def forget(self, name: str) -> None:
        """Drop a registration without waiting (start-up, for an adapter that failed to load)."""
        self._forget(name)

    # --- host memory ------------------------------------------------------------------------------------
    def _read_host(self, entry: Entry) -> None:
        if self.lm.engine_kind == "vllm":
            return  # vLLM reads the adapter from its folder itself
        with entry.loading:
            if entry.host is None:
                entry.host = on_own_thread(lambda: attach.host_copy(entry.info, self.lm.dtype), name="lora-read")
                self.stats.host_loads += 1
        self._trim_host()

    def _trim_host(self) -> None:
        """Drop host copies past ``max_cpu_loras``: least recently used first, never one held or pinned."""
        with self._cond:
            held = [e for e in self._entries.values() if e.host is not None]
            extra = len(held) - self.settings.host_loras
            if extra <= 0:
                return
            for entry in sorted(held, key=lambda e: e.used_at):
                if extra <= 0:
                    break
                if entry.users == 0 and not entry.pin:
                    entry.host = None
                    self.stats.host_evictions += 1
                    extra -= 1

    # --- fetching and checking --------------------------------------------------------------------------
    def _fetch(self, name: str, src: str) -> tuple[Path, Path | None]:
        """The local folder of ``src`` and, when it was downloaded here, that folder (to remove later)."""
        if not isinstance(src, str) or not src.strip():
            raise AdapterRejected("src is required: a folder or an s3:// prefix holding the adapter", param="src")
        src = src.strip()
        if src.startswith("s3://"):
            from .s3 import download_prefix

            digest = hashlib.sha256(src.encode()).hexdigest()[:16]
            dest = Path(self.settings.adapter_cache_dir) / f"{name}-{digest}"
            try:
                download_prefix(src, dest, error=AdapterRejected, missing=_Missing,
                                max_bytes=self.settings.adapter_max_bytes, max_files=MAX_ADAPTER_FILES,
                                what="adapter object")
            except Exception:
                self._discard(dest)
                raise
            return dest, dest
        if "://" in src and not src.startswith("file://"):
            raise AdapterRejected(f"src {shown(src)} must be a folder or an s3:// prefix", param="src")
        folder = Path(src.removeprefix("file://"))
        if not folder.is_absolute():
            raise AdapterRejected(f"src {shown(src)} must be an absolute folder path or an s3:// prefix", param="src")
        if not folder.exists():
            raise _Missing(f"src {shown(src)} does not exist", param="src")
        return folder, None

    def _validate(self, name: str, folder: Path, *, packaged: bool) -> AdapterInfo:
        """The packager's checks against the loaded base (see ``lora_endpoint.packaging.validate``)."""
        info = read_adapter(name, folder)
        if self.lm.merged_adapter is None:
            check_unmerged(info)
        adapter_checks.check_rank(info, self.settings.max_lora_rank)
        if not packaged and not self.settings.allow_base_mismatch:  # the packager checked its own
            adapter_checks.check_base_name(
                info, self._base_names, base_path=self._base_path,
                hint=" (set LORA_ALLOW_BASE_MISMATCH=true if it is the same model)")
        adapter_checks.check_target_modules(info, self._shapes)
        check_adapter_weights(info, self._shapes)
        try:
            shapes = tensor_shapes(info.path / SAFETENSORS_WEIGHTS)
        except ValueError as err:
            raise AdapterError(f"adapter {name!r}: {err}") from None
        adapter_checks.check_vocab(info, shapes, self._vocab)
        return info

    def _own_tokenizer(self, info: AdapterInfo) -> Any:
        if not info.has_tokenizer:
            return None
        try:
            return self._load_tokenizer(str(info.path))
        except Exception as err:
            raise AdapterError(
                f"adapter {info.name!r}: its tokenizer files do not load ({type(err).__name__})") from None

    def _just_in_time(self, name: str) -> str:
        from .adapters import validate_adapter_name

        try:
            validate_adapter_name(name)
        except AdapterError as err:
            raise UnknownAdapter(str(err), param="adapters") from None
        with self._cond:
            missed = self._missing.get(name)
        if missed is not None and time.monotonic() - missed < MISSING_TTL_S:
            raise UnknownAdapter(f"adapter {shown(name)} is not served here and not under the just-in-time prefix",
                                 param="adapters")
        prefix = self.settings.adapter_jit_prefix.rstrip("/")
        src = f"{prefix}/{name}/" if prefix.startswith("s3://") else str(Path(prefix) / name)
        try:
            self.register(name, src, origin=JIT)
        except _Missing:
            with self._cond:
                self._missing[name] = time.monotonic()
                if len(self._missing) > 10_000:
                    self._missing.clear()
            raise UnknownAdapter(f"adapter {shown(name)} is not served here and not under the just-in-time prefix",
                                 param="adapters") from None
        except AdapterRejected as err:
            raise UnknownAdapter(f"adapter {shown(name)} under the just-in-time prefix cannot be served: "
                                 f"{err.message}", param="adapters") from None
        except AdapterConflict:
            pass  # registered by a concurrent request meanwhile
        self.stats.jit_loads += 1
        return self.resolve(name)

    # --- bookkeeping ------------------------------------------------------------------------------------
    def _checked_names(self, name: Any, alias: Any) -> tuple[str, str]:
        from .adapters import validate_adapter_name

        try:
            validate_adapter_name(name)
            alias = name if alias in (None, "") else alias
            validate_adapter_name(alias)
        except AdapterError as err:
            raise AdapterRejected(str(err), param="name") from None
        for taken in {name, alias}:
            if taken == self.lm.base_name:  # requests naming it get the base model
                raise AdapterConflict(f"{shown(taken)} is the base model's name", param="name")
        return name, alias

    def _check_alias_free(self, name: str, alias: str) -> None:
        for taken in {name, alias}:
            owner = self._aliases.get(taken)
            if owner is not None and owner != name and not self._entries[owner].removing:
                raise AdapterConflict(f"{shown(taken)} is already the name or alias of adapter {shown(owner)}",
                                      param="alias")
            if taken in self._entries and taken != name and not self._entries[taken].removing:
                raise AdapterConflict(f"{shown(taken)} is already a registered adapter", param="alias")

    def _entry(self, name: str) -> Entry:
        with self._cond:
            entry = self._entries.get(self._aliases.get(name, name))
            if entry is None or entry.removing:
                raise UnknownAdapter(f"adapter {shown(name)} is not registered", param="name")
            return entry

    def _name_lock(self, name: str) -> threading.Lock:
        with self._cond:
            return self._name_locks.setdefault(name, threading.Lock())

    def _publish_names(self) -> None:
        """``lm.adapters`` / ``lm.adapter_tokenizers`` as new dicts (readers iterate them without the lock)."""
        live = {n: e for n, e in sorted(self._entries.items()) if not e.removing}
        self.lm.adapters = {n: e.info for n, e in live.items()}
        self.lm.adapter_tokenizers = {n: e.tokenizer for n, e in live.items() if e.tokenizer is not None}

    def _free(self, entry: Entry) -> None:
        name = entry.info.name
        with self._cond:
            if self._entries.get(name) is not entry:
                return
            resident = name in self._device
            self._device.pop(name, None)
        remove = getattr(self.lm.engine, "remove_adapter", None)
        if remove is not None:
            remove(name)
        if resident:
            with self._move_lock:
                self._on_model(lambda: self._evict([name], tuple(n for n in self.lm.resident if n != name)))
        self._forget(name, entry)
        log.info("adapter %r unregistered", name)

    def _forget(self, name: str, entry: Entry | None = None) -> None:
        with self._cond:
            entry = entry or self._entries.get(name)
            if entry is None or self._entries.get(name) is not entry:
                return
            del self._entries[name]
            self._aliases = {a: n for a, n in self._aliases.items() if n != name}
            self._publish_names()
            self.stats.unregistered += 1
            self._cond.notify_all()
        entry.host = None
        self._discard(entry.owned)

    @staticmethod
    def _discard(folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _advance(steps: Iterator[None], budget_s: float) -> bool:
    """Run ``steps`` for about ``budget_s``; True once they are exhausted."""
    started = time.perf_counter()
    return all(time.perf_counter() - started < budget_s for _ in steps)


def _same_src(entry: Entry, src: str) -> bool:
    """``src`` is where ``entry`` came from; for a packaged adapter, LMI's start-up call names it by its
    folder in the model dir as the container sees it (``.../adapters/<name>``), which may be another path."""
    if entry.src == src:
        return True
    if entry.origin == PACKAGE:
        return Path(src.rstrip("/")).name == entry.info.name
    return not src.startswith("s3://") and Path(src).resolve() == Path(entry.src).resolve()


def _caller_reason(err: BaseException, folder: Path) -> str:
    """An adapter error as a caller may see it: no local paths."""
    from .attach import short_reason

    return short_reason(err, folder)
