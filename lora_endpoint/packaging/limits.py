"""Extraction limits: the caps on what an archive may expand to, their defaults, and their flags.

The defaults (see ``lora_endpoint.packaging.extract`` for how they are enforced): at most 16 times the
archive's size in file bytes, at least 64 MiB, and 10,000 members. Model weights barely compress and
text about 4:1, so real archives stay far below 16:1, while a gzip bomb (about 1000:1) is cut off early.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

from lora_endpoint.packaging.config import PackageError

DEFAULT_MAX_MEMBERS = 10_000
DEFAULT_RATIO = 16
DEFAULT_MIN_BYTES = 64 << 20
# The same flags in lora-endpoint package extract and serve_local.py.
MAX_BYTES_HELP = ("refuse a model.tar.gz that would extract to more than SIZE, e.g. 40G (default: 16 times the "
                  "archive's size, at least 64 MiB); a manifest.json that comes first, as lora-endpoint package "
                  "build writes "
                  "it, must declare no more, and then its sizes are the exact limit")
MAX_MEMBERS_HELP = ("refuse a model.tar.gz with more than N files and folders (default: 10000; with a leading "
                    "manifest.json, exactly the ones it lists)")
_SIZE_RE = re.compile(r"\s*(\d{1,19})\s*([kmgt]?)(?:i?b)?\s*", re.IGNORECASE | re.ASCII)
_COUNT_RE = re.compile(r"\s*(\d{1,19})\s*", re.ASCII)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class ArchiveLimitError(PackageError):
    """An archive that would expand past a cap: bytes, members, or the size of its headers."""


@dataclass(frozen=True)
class Limits:
    """Caps chosen by the caller; ``None`` means the default described in the module docstring."""

    max_bytes: int | None = None
    max_members: int | None = None


def format_size(size: int) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    value = float(size)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def size_arg(text: str) -> int:
    """argparse type: a positive size in bytes, with an optional binary unit (``500M``, ``20G``, ``1T``)."""
    match = _SIZE_RE.fullmatch(text)
    value = int(match[1]) * _UNITS[match[2].lower()] if match else 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M, 20G or 1T, got {text!r}")
    return value


def count_arg(text: str) -> int:
    """argparse type: a positive whole number."""
    match = _COUNT_RE.fullmatch(text)
    if not match or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(match[1])
