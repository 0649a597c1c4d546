"""What goes where in the artifact, and the small files the packager writes itself.

```
model.py              DJL entry: makes lora_endpoint/ importable, exposes handle + register_adapter
serving.properties    engine=Python, custom entry point, no rolling batch, DJL's async mode (or sync), options
requirements.txt      for LMI (comment only: the image ships torch / transformers / peft)
code/inference.py     SageMaker inference toolkit entry (model_fn / input_fn / predict_fn / output_fn)
code/requirements.txt
lora_endpoint/        the handler as the project installs it: __init__.py, contract/ and handler/ (*.py)
adapters/<name>/      one folder per adapter
base/                 the base model, when bundled (merged with the adapter under --merge)
manifest.json         versions, base model, adapters, every file's size and sha256
```
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import lora_endpoint
from lora_endpoint.contract.manifest import Entry
from lora_endpoint.contract.settings import HandlerSettings
from lora_endpoint.packaging.compat import normalised_bytes
from lora_endpoint.packaging.config import BuildOptions, PackageError

# What the containers import: the namespace's (import-free) __init__.py, the contract and the handler, under
# the names the project uses everywhere (lora_endpoint.handler...), so the same code runs in the tree, installed
# and in the artifact. The packager, local endpoint, clients and training stay out of the artifact.
PACKAGE_DIR = Path(next(iter(lora_endpoint.__path__))).resolve()
SHIPPED_PACKAGES = ("contract", "handler")
# DJL / LMI keys we write under ``option.``; every other option must be a HandlerSettings field.
LMI_OPTIONS = frozenset({"entryPoint", "rolling_batch", "async_mode", "handler", "tensor_parallel_degree",
                         "max_lora_rank"})

MODEL_PY = '''\
"""DJL Serving entry point, written by lora_endpoint.packaging: it makes lora_endpoint/ importable, nothing more.

DJL loads this file by path (the model dir is not on sys.path) and may run it several times.
"""
import os
import sys

_MODEL_DIR = os.path.dirname(os.path.abspath(__file__))
if _MODEL_DIR not in sys.path:
    sys.path.insert(0, _MODEL_DIR)

from lora_endpoint.handler.entry import (  # noqa: E402,F401
    handle, handle_sync, register_adapter, unregister_adapter, update_adapter,
)
'''
# DJL calls the adapter functions by these names in either mode: a sync-mode package binds the sync ones.
MODEL_PY_SYNC = MODEL_PY + '''\
from lora_endpoint.handler.entry import register_adapter_sync as register_adapter  # noqa: E402,F401,F811
from lora_endpoint.handler.entry import unregister_adapter_sync as unregister_adapter  # noqa: E402,F401,F811
from lora_endpoint.handler.entry import update_adapter_sync as update_adapter  # noqa: E402,F401,F811
'''

INFERENCE_PY = '''\
"""SageMaker inference toolkit entry point, written by lora_endpoint.packaging.

The toolkit puts code/ on sys.path, not the model dir: add the parent so lora_endpoint/ imports.
"""
import os
import sys

_MODEL_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _MODEL_DIR not in sys.path:
    sys.path.insert(0, _MODEL_DIR)

from lora_endpoint.handler.entry import input_fn, model_fn, output_fn, predict_fn  # noqa: E402,F401
'''

REQUIREMENTS_TXT = """\
# Installed by the container at start-up. Deliberately empty: the image ships torch, transformers
# and peft, and a pin here would need network access from the endpoint.
"""


def handler_files() -> list[Entry]:
    """Every ``*.py`` the containers import: ``lora_endpoint/__init__.py``, the contract and the handler."""
    files = [PACKAGE_DIR / "__init__.py"]
    for name in SHIPPED_PACKAGES:
        files += sorted(p for p in (PACKAGE_DIR / name).rglob("*.py") if "__pycache__" not in p.parts)
    return [Entry(f"lora_endpoint/{p.relative_to(PACKAGE_DIR).as_posix()}", source=p) for p in files]


def handler_options(options: BuildOptions, base_reference: str | None) -> dict[str, str]:
    """The ``option.*`` values that configure ``HandlerSettings`` (checked against its fields)."""
    values = {
        "dtype": options.dtype,
        "max_new_tokens": str(options.max_new_tokens),
        "engine": options.engine,
    }
    if base_reference:
        values["base_model"] = base_reference
    fields = {field.name for field in dataclasses.fields(HandlerSettings)}
    unknown = sorted(set(values) - fields)
    if unknown:  # a programming error, not bad input: the handler would ignore these silently
        raise PackageError(f"serving.properties: options not known to HandlerSettings: {unknown}")
    return values


def serving_properties(options: BuildOptions, base_reference: str | None) -> str:
    """``serving.properties`` pinning our entry point, DJL's mode and our settings.

    Async mode (the default): ``option.async_mode=true`` and no ``option.handler``, so DJL's async engine
    awaits ``handle`` once per request; no ``batch_size`` / ``max_batch_delay``, since DJL would still
    gather requests into batches in front of the async engine and then fail every batched request (its
    ``PyPredictor`` expects one output per request), and at batch size 1 the delay is never waited. Sync
    mode: ``option.async_mode=false``, ``option.handler=handle_sync`` and DJL's dynamic batching. Both pin
    ``option.rolling_batch=disable``: LMI's rolling batch would take the requests away from our handler,
    and ``auto`` turns async mode on by itself on recent images.
    """
    lines = [
        "# Written by lora_endpoint.packaging. DJL / LMI settings, then the handler's (HandlerSettings fields).",
        "engine=Python",
    ]
    mode: dict[str, str] = {"async_mode": "true"}
    if options.djl_mode == "sync":
        lines += [f"batch_size={options.batch_size}", f"max_batch_delay={options.max_batch_delay_ms}"]
        mode = {"async_mode": "false", "handler": "handle_sync"}
    lmi = {
        "entryPoint": "model.py",
        "rolling_batch": "disable",
        **mode,
        "tensor_parallel_degree": str(options.tensor_parallel_degree),
        "max_lora_rank": str(options.max_lora_rank),
    }
    assert set(lmi) <= LMI_OPTIONS
    lines += [f"option.{key}={value}" for key, value in lmi.items()]
    lines += [f"option.{key}={value}" for key, value in sorted(handler_options(options, base_reference).items())]
    return "\n".join(lines) + "\n"


def generated_files(options: BuildOptions, base_reference: str | None) -> list[Entry]:
    """The files the packager writes itself (everything but lora_endpoint/, adapters/, base/, manifest)."""
    return [
        Entry("model.py", data=(MODEL_PY_SYNC if options.djl_mode == "sync" else MODEL_PY).encode()),
        Entry("serving.properties", data=serving_properties(options, base_reference).encode()),
        Entry("requirements.txt", data=REQUIREMENTS_TXT.encode()),
        Entry("code/inference.py", data=INFERENCE_PY.encode()),
        Entry("code/requirements.txt", data=REQUIREMENTS_TXT.encode()),
    ]


def folder_entries(prefix: str, source: Path, files: tuple[str, ...]) -> list[Entry]:
    """``files`` (relative POSIX paths under ``source``) placed under ``prefix/``."""
    return [Entry(f"{prefix}/{name}", source=source / name) for name in files]


def bundled_entries(prefix: str, source: Path, files: tuple[str, ...], *, owner: str) -> list[Entry]:
    """``folder_entries``, with the configs transformers 4.x would misread replaced by in-memory copies
    that 4.x and 5.x read alike (``lora_endpoint.packaging.compat``); ``source`` is never modified."""
    entries = []
    for entry, name in zip(folder_entries(prefix, source, files), files, strict=True):
        data = normalised_bytes(source, name, owner=owner)
        entries.append(entry if data is None else Entry(entry.arcname, data=data))
    return entries
