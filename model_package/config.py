"""Build options: one frozen dataclass, validated once, whatever front end (CLI, tests) made it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from handler.config import DTYPES

FORMATS = ("tar", "dir")
ARCHIVE_NAME = "model.tar.gz"
# What an S3 URI must look like: bucket (3-63 chars, DNS-style) and an optional prefix.
S3_URI_RE = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(?P<key>.*))?$")
# A hub id: ``name`` or ``org/name`` (what transformers' from_pretrained accepts as a repo id).
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(?:/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class PackageError(ValueError):
    """Bad input for a build or an upload; the message names the adapter / option and the field."""


@dataclass(frozen=True)
class BuildOptions:
    """Everything one build needs. ``adapters`` is ``((name, folder), ...)`` in the order given."""

    base_model: str
    output: Path
    adapters: tuple[tuple[str, Path], ...] = ()
    format: str = "tar"
    merge: bool = False
    dtype: str = "auto"
    batch_size: int = 1
    max_batch_delay_ms: int = 100
    max_new_tokens: int = 1024
    tensor_parallel_degree: int = 1
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
