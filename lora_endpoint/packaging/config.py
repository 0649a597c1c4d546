"""Build options: one frozen dataclass, validated once, whatever front end (CLI, tests) made it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from lora_endpoint.contract.manifest import PackageError
from lora_endpoint.contract.settings import DTYPES

__all__ = ["DTYPES", "BuildOptions", "PackageError"]

FORMATS = ("tar", "dir")
# DJL Serving's Python engine modes (option.async_mode): see layout.serving_properties.
DJL_MODES = ("async", "sync")
SYNC_BATCH_SIZE, SYNC_MAX_BATCH_DELAY_MS = 1, 100  # what a sync package gets when the build sets neither
ARCHIVE_NAME = "model.tar.gz"
# What an S3 URI must look like: bucket (3-63 chars, DNS-style) and an optional prefix.
S3_URI_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
# A hub id: ``name`` or ``org/name`` (what transformers' from_pretrained accepts as a repo id).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class BuildOptions:
    """Everything one build needs. ``adapters`` is ``((name, folder), ...)`` in the order given."""

    base_model: str
    output: Path
    adapters: tuple[tuple[str, Path], ...] = ()
    format: str = "tar"
    merge: bool = False
    dtype: str = "auto"
    djl_mode: str = "async"
    """``async``: one ``async def handle`` call per request, the engine batches them (the default);
    ``sync``: ``handle_sync`` with DJL's dynamic batching (``batch_size``, ``max_batch_delay_ms``)."""
    batch_size: int | None = None
    """Sync mode only (default 1); in async mode DJL's batching would break requests, so it is refused."""
    max_batch_delay_ms: int | None = None
    """Sync mode only (default 100)."""
    max_new_tokens: int = 1024
    tensor_parallel_degree: int = 1
    engine: str = "auto"
    """``option.engine``: ``auto``, ``transformers`` or ``vllm`` (see lora_endpoint/contract/settings.py)."""
    max_lora_rank: int = 64
    allow_modules_to_save: bool = False
    allow_base_mismatch: bool = False
    convert_pickle: bool = False
    compress_level: int = 1
    """gzip level; 1 because model weights barely compress at any level (see docs/benchmarks.md)."""
    workers: int = 0
    """Threads for hashing and compression; 0 means one per CPU."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.base_model or not self.base_model.strip():
            raise PackageError("--base-model is required: a local folder, an s3:// prefix or a hub id")
        if self.format not in FORMATS:
            raise PackageError(f"--format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.dtype not in DTYPES:
            raise PackageError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.djl_mode not in DJL_MODES:
            raise PackageError(f"--djl-mode must be one of {', '.join(DJL_MODES)}, got {self.djl_mode!r}")
        if self.djl_mode == "async" and (self.batch_size is not None or self.max_batch_delay_ms is not None):
            raise PackageError("--batch-size and --max-batch-delay are DJL sync-mode settings: add --djl-mode sync, "
                               "or leave them out (in async mode every request is its own handle() call, the engine "
                               "batches them, and a DJL batch_size above 1 would fail batched requests)")
        if self.djl_mode == "sync":  # fill in DJL's defaults, so the manifest records what was written
            object.__setattr__(self, "batch_size", SYNC_BATCH_SIZE if self.batch_size is None else self.batch_size)
            object.__setattr__(self, "max_batch_delay_ms",
                               SYNC_MAX_BATCH_DELAY_MS if self.max_batch_delay_ms is None else self.max_batch_delay_ms)
        bounds = {
            "batch_size": (self.batch_size, 1, 1024, "--batch-size"),
            "max_batch_delay_ms": (self.max_batch_delay_ms, 0, 60_000, "--max-batch-delay"),
            "max_new_tokens": (self.max_new_tokens, 1, 1 << 20, "--max-new-tokens"),
            "tensor_parallel_degree": (self.tensor_parallel_degree, 1, 64, "--tensor-parallel-degree"),
            "max_lora_rank": (self.max_lora_rank, 1, 4096, "--max-lora-rank"),
            "compress_level": (self.compress_level, 0, 9, "--compress-level"),
            "workers": (self.workers, 0, 256, "--workers"),
        }
        for value, low, high, flag in bounds.values():
            if value is None:  # a sync-only setting in async mode
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise PackageError(f"{flag} must be an integer in {low}..{high}, got {value!r}")
        if self.merge and len(self.adapters) != 1:
            raise PackageError(f"--merge bakes exactly one adapter into the base, got {len(self.adapters)}")
        if self.merge and self.base_kind != "local":
            raise PackageError("--merge needs a local --base-model folder to merge into")
        if self.format == "tar" and self.output.name.endswith("/"):
            raise PackageError(f"--output must name a file for --format tar, got {self.output}")

    @property
    def base_kind(self) -> str:
        """``local`` (a folder to bundle), ``s3`` (a prefix the handler downloads) or ``hub`` (an id)."""
        return base_kind(self.base_model)


def base_kind(reference: str) -> str:
    """Classify a ``--base-model`` value; raise ``PackageError`` for one that is none of the three."""
    if reference.startswith("s3://"):
        if not S3_URI_RE.match(reference):
            raise PackageError(f"--base-model {reference!r} is not a valid s3://bucket/prefix URI")
        return "s3"
    path = Path(reference).expanduser()
    if path.is_dir():
        return "local"
    looks_like_path = reference.startswith((".", "/", "~")) or reference.count("/") > 1 or path.exists()
    if looks_like_path or not HUB_ID_RE.match(reference):
        raise PackageError(f"--base-model {reference!r}: no such folder, and not an s3:// URI or a hub id")
    return "hub"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ``("bucket", "a/b")``; raise ``PackageError`` when it is not one."""
    match = S3_URI_RE.match(uri)
    if not match:
        raise PackageError(f"--upload must look like s3://bucket/prefix, got {uri!r}")
    return match["bucket"], (match["key"] or "").strip("/")
