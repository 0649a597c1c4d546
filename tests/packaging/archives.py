"""Hand-made archives for the extractor's tests: packages with or without a manifest, and gzip bombs."""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import tarfile
from pathlib import Path
from typing import Any

from lora_endpoint.contract.manifest import MANIFEST, Entry, build_manifest, digest_entries

Members = list[tuple[str, bytes | None]]  # (name, data); None is a folder


def manifest_for(files: dict[str, bytes]) -> bytes:
    """``manifest.json`` bytes for ``files``, exactly as ``lora-package build`` writes them."""
    digests = digest_entries([Entry(name, data=data) for name, data in files.items()], workers=1)
    return build_manifest(package_version="test", base_model={}, serving={}, adapters=[], digests=digests)


def write_tar(path: Path, members: Members) -> Path:
    """A tar.gz holding ``members`` in the order given."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def package_tar(path: Path, files: dict[str, bytes], *, manifest: bytes | None = None, first: bool = True) -> Path:
    """A package archive: ``files`` plus ``manifest`` (default: the right one), first or last."""
    listed = manifest if manifest is not None else manifest_for(files)
    members: Members = list(files.items())
    members = [(MANIFEST, listed), *members] if first else [*members, (MANIFEST, listed)]
    return write_tar(path, members)


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def gzip_bomb(path: Path, *, size: int, files: int = 1, manifest: bytes | None = None) -> Path:
    """``files`` files of zeros, ``size`` bytes in all, optionally after a leading ``manifest``.

    Written as one gzip member per MiB of zeros (a gzip file may hold many; gunzip reads them as one
    stream), so a 1 GiB bomb costs 1 MiB of zeros compressed once, not 1 GiB of compression.
    """
    mib = 1 << 20
    zeros = gzip.compress(bytes(mib), compresslevel=9, mtime=0)
    each = size // files
    assert each % mib == 0, "whole MiB per file"
    with open(path, "wb") as sink:
        if manifest is not None:
            sink.write(gzip.compress(_header(MANIFEST, len(manifest)) + manifest + bytes(-len(manifest) % 512)))
        for index in range(files):
            sink.write(gzip.compress(_header(f"zeros-{index:05d}.bin", each)))
            for _ in range(each // mib):
                sink.write(zeros)
        sink.write(gzip.compress(bytes(1024)))
    return path


# --- fuzz: a seeded loop over mutated manifests ----------------------------------------------------------

ODD_VALUES: list[Any] = [None, True, 0, -1, 1.5, 1 << 70, "", "..", "/abs", "a/../b", "\ud800", [], {}, [1], {"a": 1},
                         "x" * 300, "ab" * 32, "manifest.json"]


def _mutate(document: Any, rng: random.Random) -> Any:
    """Replace, drop or duplicate one value somewhere in ``document``."""
    if not isinstance(document, dict | list) or not document or rng.random() < 0.25:
        return rng.choice(ODD_VALUES)
    keys = list(document) if isinstance(document, dict) else list(range(len(document)))
    key = rng.choice(keys)
    action = rng.random()
    if action < 0.2 and isinstance(document, dict):
        del document[key]
    elif action < 0.3 and isinstance(document, list):
        document.append(copy.deepcopy(document[key]))
    else:
        document[key] = _mutate(document[key], rng)
    return document


def mutated_manifests(count: int, seed: int = 10) -> list[bytes]:
    """``count`` manifests derived from a real one: structural mutations, then byte-level damage."""
    rng = random.Random(seed)
    base = json.loads(manifest_for({"model.py": b"x", "lora_endpoint/handler/entry.py": b"y",
                                    "adapters/a/w.bin": b"z"}))
    out = []
    for _ in range(count):
        document = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            document = _mutate(document, rng)
        raw = json.dumps(document).encode("utf-8", "surrogatepass")
        if rng.random() < 0.2 and raw:
            position = rng.randrange(len(raw))
            raw = raw[:position] + bytes([rng.randrange(256)]) + raw[position + 1:]
        out.append(raw)
    return out
