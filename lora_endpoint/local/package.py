"""Find what to serve and load it the way DJL Serving does.

A package is a ``model.tar.gz``, an extracted package dir (``model.py`` + ``serving.properties`` at its
root) or a plain model dir (``base/`` + ``adapters/``). Nothing in a package runs before it is checked:
an archive is extracted with ``lora_endpoint.packaging``'s safe, bounded extractor, and an archive or dir with
``manifest.json`` must match it file by file (sha256, size, nothing missing or extra). Code without a
manifest (a hand-written ``model.py``) is refused unless the caller trusts it (``allow_no_manifest``);
a plain model dir has no code and is served as it is. The entry file (``option.entryPoint``, else
``model.py``) is loaded by file path under a generated module name - the model dir is not put on
``sys.path`` - and its ``handle`` (or ``option.handler``) gets an init call whose properties are the
``option.*`` keys with the prefix stripped, plus ``model_dir``. A plain model dir has no entry file:
the repository's ``lora_endpoint.handler.entry`` serves it.

The DJL mode comes from ``option.async_mode`` as DJL reads it (``true``, any case, is async; absent is
sync): an async package's ``handle`` must be an ``async def`` (DJL's async engine awaits it), a sync
package's a plain function, and a mismatch is refused here, as DJL would fail the load. A plain model
dir (no ``serving.properties``) is served in async mode, what ``lora-endpoint package build`` writes by default.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from lora_endpoint.contract.manifest import MANIFEST, verify_tree
from lora_endpoint.packaging.config import PackageError as BadArchiveError
from lora_endpoint.packaging.extract import safe_extract
from lora_endpoint.packaging.limits import Limits

from . import djl_io

log = logging.getLogger("lora_endpoint.local")

SERVING_PROPERTIES = "serving.properties"
DEFAULT_ENTRY = "model.py"
# Batching defaults for a plain model dir (no serving.properties): a little batching helps locally.
PLAIN_DIR_BATCH_SIZE = 8
PLAIN_DIR_MAX_BATCH_DELAY_MS = 50


class PackageError(Exception):
    """The package cannot be served; the message says why (shown without a stack trace)."""


def read_properties(path: Path) -> dict[str, str]:
    """``serving.properties``: ``key=value`` lines, ``#`` comments, blank lines ignored."""
    props: dict[str, str] = {}
    if not path.is_file():
        return props
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


def extract(archive: Path, dest: Path, limits: Limits | None = None) -> Path:
    """Extract a ``model.tar.gz`` safely (no links, ``..``, bombs; see ``lora_endpoint.packaging.extract``).

    A ``manifest.json`` in it is checked against every file before anything is renamed into place.
    """
    try:
        return safe_extract(archive, dest, limits=limits)
    except BadArchiveError as err:
        raise PackageError(str(err)) from None


def _verify_dir(path: Path) -> bool:
    """Check a package dir against its ``manifest.json``; ``False`` when it has none."""
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        return False
    try:
        verify_tree(path)
    except BadArchiveError as err:
        raise PackageError(f"{path}: does not match its {MANIFEST}: {err}") from None
    return True


@dataclass(frozen=True)
class PackageSpec:
    """What to serve, resolved from the command line argument. ``batch_size`` and ``max_batch_delay_ms``
    drive the sync mode's batcher; in async mode DJL batches nothing before ``handle``."""

    model_dir: Path
    entry_file: Path | None
    handler_name: str
    init_properties: dict[str, str]
    batch_size: int
    max_batch_delay_ms: int
    temp_dir: Path | None = None
    async_mode: bool = False
    plain: bool = False
    """A plain model dir: no serving.properties and no code, served by the repository's handler."""


def _int_property(props: dict[str, str], key: str, default: int) -> int:
    try:
        return max(0, int(props.get(key, default)))
    except ValueError:
        raise PackageError(f"{SERVING_PROPERTIES}: {key} must be an integer, got {props[key]!r}") from None


def resolve(
    package: str | Path,
    *,
    work_dir: Path | None = None,
    limits: Limits | None = None,
    allow_no_manifest: bool = False,
) -> PackageSpec:
    """Resolve ``package`` (tar.gz, package dir or plain model dir) into what ``ServedModel`` loads.

    An archive goes to a new ``lora-local-*`` folder under ``work_dir`` (default: the temp dir), which
    is removed again if anything fails, Ctrl-C included; on success it is ``temp_dir`` of the result.
    """
    path = Path(package).expanduser()
    if not path.is_file():
        if not path.is_dir():
            raise PackageError(f"{path} does not exist")
        return _spec(path, verified=_verify_dir(path), allow_no_manifest=allow_no_manifest)
    temp_dir = Path(tempfile.mkdtemp(prefix="lora-local-", dir=work_dir))
    try:
        model_dir = extract(path, temp_dir / "model", limits)
        # extract() checked the manifest if the archive has one
        return _spec(model_dir, verified=(model_dir / MANIFEST).is_file(), allow_no_manifest=allow_no_manifest,
                     temp_dir=temp_dir, source=path)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise


def _spec(path: Path, *, verified: bool, allow_no_manifest: bool, temp_dir: Path | None = None,
          source: Path | None = None) -> PackageSpec:
    props = read_properties(path / SERVING_PROPERTIES)
    options = {k[len("option."):]: v for k, v in props.items() if k.startswith("option.")}
    entry_name = options.get("entryPoint") or DEFAULT_ENTRY
    entry: Path | None = path / entry_name
    if not (path / entry_name).resolve().is_relative_to(path.resolve()):
        raise PackageError(f"{SERVING_PROPERTIES} names entryPoint {entry_name!r}, outside {path}: refused, "
                           "code from outside the package would run unchecked")
    if entry is None or not entry.is_file():
        if "entryPoint" in options:
            raise PackageError(f"{SERVING_PROPERTIES} names entryPoint {entry_name!r}, which is not in {path}")
        entry = None
        if not (path / "base").is_dir() and not (path / "config.json").is_file():
            raise PackageError(f"{path} has no model.py, no base/ and no config.json: not a model package")
    if entry is not None and not verified and not allow_no_manifest:
        raise PackageError(f"{source or path} has {entry_name} but no {MANIFEST}, so its code cannot be checked "
                           "before it runs; build it with `lora-endpoint package build`, or pass --allow-no-manifest "
                           "to trust it")
    plain = not props and entry is None
    # DJL's Boolean.parseBoolean: "true" in any case is true, anything else (or nothing) false; a plain
    # model dir is served as `lora-endpoint package` packages are, in async mode
    async_mode = plain or options.get("async_mode", "").strip().lower() == "true"
    batch_size = _int_property(props, "batch_size", PLAIN_DIR_BATCH_SIZE if not props else 1) or 1
    if async_mode and not plain and batch_size > 1:
        raise PackageError(
            f"{SERVING_PROPERTIES} sets batch_size={batch_size} with option.async_mode=true: DJL would still "
            "gather requests into batches before the async handle and then fail every batched request (its "
            "PyPredictor expects one output per request); remove batch_size, or use async_mode=false")
    return PackageSpec(
        model_dir=path.resolve(),
        entry_file=entry.resolve() if entry else None,
        handler_name=options.get("handler") or "handle",
        init_properties={**options, "model_dir": str(path.resolve())},
        batch_size=batch_size,
        max_batch_delay_ms=_int_property(props, "max_batch_delay", PLAIN_DIR_MAX_BATCH_DELAY_MS if not props else 100),
        temp_dir=temp_dir,
        async_mode=async_mode,
        plain=plain,
    )


def load_entry_module(entry: Path) -> ModuleType:
    """Load ``entry`` by file path under a generated module name, as DJL does.

    No bytecode is written from here on: a ``__pycache__`` inside a verified package dir would be an
    extra file, not in its manifest, and the next start would refuse the dir.
    """
    sys.dont_write_bytecode = True
    name = f"djl_entry_{uuid.uuid4().hex[:12]}"
    spec = importlib.util.spec_from_file_location(name, entry)
    if spec is None or spec.loader is None:
        raise PackageError(f"cannot load {entry}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class ServedModel:
    """The handler behind the endpoint: ``handle`` after its init call, and the Input/Output module.

    ``async_mode``: ``handle`` is an ``async def`` that DJL's async engine awaits once per request on
    its event loop; otherwise a plain function called on the one worker thread with whole batches.
    """

    model_dir: str
    handle: Callable[[Any], Any]
    init_properties: dict[str, str] = field(default_factory=dict)
    ready: threading.Event = field(default_factory=threading.Event)
    failed: str | None = None
    djl: ModuleType = field(default_factory=djl_io.ensure_djl_python)
    async_mode: bool = False
    module: ModuleType | None = None
    """The entry module (``model.py``, or ``lora_endpoint.handler.entry`` for a plain model dir), where DJL looks up the
    functions its management calls name (``register_adapter`` ...); None when only ``handle`` is known."""
    entry_name: str = DEFAULT_ENTRY
    function_suffix: str = ""
    """Appended to those names: ``_sync`` where a plain model dir is served by
    ``lora_endpoint.handler.entry`` in sync mode,
    as ``handle_sync`` is its sync ``handle``."""
    _on_ready: list[Callable[[], object]] = field(default_factory=list, init=False, repr=False)
    _ready_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @classmethod
    def from_spec(cls, spec: PackageSpec) -> ServedModel:
        djl = djl_io.ensure_djl_python()
        suffix = ""
        if spec.entry_file is None:
            from lora_endpoint.handler import entry as module

            handle: Callable[[Any], Any] = module.handle if spec.async_mode else module.handle_sync
            entry_name = "lora_endpoint.handler.entry"
            suffix = "" if spec.async_mode else "_sync"
        else:
            module = load_entry_module(spec.entry_file)
            handle = getattr(module, spec.handler_name, None)  # type: ignore[assignment]
            if not callable(handle):
                raise PackageError(f"{spec.entry_file.name} defines no function {spec.handler_name!r}")
            _check_mode(handle, spec)
            entry_name = spec.entry_file.name
        return cls(str(spec.model_dir), handle, dict(spec.init_properties), djl=djl, async_mode=spec.async_mode,
                   module=module, entry_name=entry_name, function_suffix=suffix)

    def entry_function(self, name: str) -> Callable[[Any], Any] | None:
        """The entry module's function ``name`` (``register_adapter``, ``update_adapter``,
        ``unregister_adapter``), looked up when it is called, as DJL's ``getattr(module, name)`` does."""
        function = getattr(self.module, name + self.function_suffix, None) if self.module is not None else None
        return function if callable(function) else None

    @property
    def mode(self) -> str:
        return "async" if self.async_mode else "sync"

    def load(self) -> None:
        """The init call (empty body): any status of 300 or more fails the load, as in DJL. In async
        mode this runs the call on a loop of its own; the server awaits ``aload`` on its loop instead."""
        if self.async_mode:
            asyncio.run(self.aload())
            return
        try:
            out = self.handle(djl_io.init_input(self.djl, self.init_properties))
        except Exception as err:
            self._fail(err)
            raise
        self._initialised(out)

    async def aload(self) -> None:
        """The async mode's init call, awaited on the caller's event loop."""
        try:
            out = await self.handle(djl_io.init_input(self.djl, self.init_properties))
        except Exception as err:
            self._fail(err)
            raise
        self._initialised(out)

    def _initialised(self, out: Any) -> None:
        code = int(getattr(out, "code", 200) or 200) if out is not None else 200
        if code >= 300:
            err = PackageError(f"the init call answered {code}")
            self._fail(err)
            raise err
        with self._ready_lock:
            for callback in self._on_ready:
                _run_hook(callback)
            self.ready.set()

    def when_ready(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once the init call has succeeded (at once if it has): on the loading thread, just
        before ``ready`` is set, so no request is answered before it has run. A failing callback is logged."""
        with self._ready_lock:
            if not self.ready.is_set():
                self._on_ready.append(callback)
                return
        _run_hook(callback)

    def _fail(self, err: BaseException) -> None:
        self.failed = self.failed or str(err) or type(err).__name__

    def handler_function(self, name: str) -> Callable[..., Any] | None:
        """A function of the module defining ``handle``: ``lora_endpoint.handler.entry`` for this repository's
        handler, a
        package's ``model.py`` included (it imports ``handle`` from there); None for a foreign ``model.py``.
        ``engine_stats`` here, and ``add_telemetry_sink`` / ``telemetry_snapshot`` for ``/metrics``."""
        module = sys.modules.get(getattr(self.handle, "__module__", "") or "")
        function = getattr(module, name, None)
        return function if callable(function) else None

    def engine_stats(self) -> dict[str, Any] | None:
        """The continuous-batching engine's counters when the served handler is this repository's and
        has started one."""
        stats = self.handler_function("engine_stats")
        result = stats() if stats is not None else None
        return result if isinstance(result, dict) else None


def _run_hook(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # what runs when the model is ready must not fail the load
        log.exception("a model-ready callback failed")


def _check_mode(handle: Callable[[Any], Any], spec: PackageSpec) -> None:
    """DJL fails the load when the function does not match the mode; say so before serving."""
    assert spec.entry_file is not None
    is_async = inspect.iscoroutinefunction(handle)
    if spec.async_mode and not is_async:
        raise PackageError(
            f"{SERVING_PROPERTIES} sets option.async_mode=true but {spec.entry_file.name}'s {spec.handler_name!r} "
            "is not an async function: DJL's async engine awaits it and fails the load (set option.async_mode=false "
            "for a synchronous handle)")
    if is_async and not spec.async_mode:
        raise PackageError(
            f"{spec.entry_file.name}'s {spec.handler_name!r} is an async function but {SERVING_PROPERTIES} does not "
            "set option.async_mode=true: DJL's sync engine would fail every call with 'Invalid output type: "
            "coroutine'")
