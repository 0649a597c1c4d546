"""Reading a manifest back: every malformed one is a ManifestError naming the field, never a crash."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lora_endpoint.contract.manifest import ManifestError, parse_manifest, verify_tree
from tests.packaging.archives import manifest_for, mutated_manifests

SHA = "ab" * 32
HANDLER = Path("lora_endpoint", "handler")
GOOD: dict[str, Any] = {"manifest_format": 1, "files": [{"path": "model.py", "size": 3, "sha256": SHA}]}


def _with_files(*items: Any) -> bytes:
    return json.dumps({"manifest_format": 1, "files": list(items)}).encode()


MALFORMED: dict[str, tuple[bytes, str]] = {
    "not-json": (b"{'files': []}", "not valid JSON"),
    "not-utf8": (b'{"files": "\xff"}', "not valid JSON"),
    "a-list": (b"[]", "must be a JSON object, not list"),
    "a-string": (b'"manifest"', "must be a JSON object, not str"),
    "deeply-nested": (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
    "huge-integer": (b'{"manifest_format": 1, "files": [], "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
    "no-format": (json.dumps({"files": []}).encode(), "manifest_format must be 1"),
    "format-true": (json.dumps({"manifest_format": True, "files": []}).encode(), "manifest_format must be 1"),
    "future-format": (json.dumps({"manifest_format": 2, "files": []}).encode(), "manifest_format must be 1"),
    "no-files": (json.dumps({"manifest_format": 1}).encode(), "files must be a list"),
    "files-object": (json.dumps({"manifest_format": 1, "files": {"model.py": 3}}).encode(), "files must be a list"),
    "entry-string": (_with_files("model.py"), r"files\[0\] must be an object"),
    "entry-no-path": (_with_files({"size": 1, "sha256": SHA}), r"files\[0\] has no path"),
    "entry-no-size-sha": (_with_files({"path": "a"}), r"files\[0\] has no size, sha256"),
    "path-number": (_with_files({"path": 7, "size": 1, "sha256": SHA}), "path must be a non-empty string"),
    "path-empty": (_with_files({"path": "", "size": 1, "sha256": SHA}), "path must be a non-empty string"),
    "path-absolute": (_with_files({"path": "/etc/passwd", "size": 1, "sha256": SHA}), "absolute"),
    "path-drive": (_with_files({"path": "C:/evil", "size": 1, "sha256": SHA}), "absolute"),
    "path-backslash": (_with_files({"path": "a\\..\\b", "size": 1, "sha256": SHA}), "not POSIX"),
    "path-dotdot": (_with_files({"path": "adapters/../../evil", "size": 1, "sha256": SHA}), r"climbs out"),
    "path-dot": (_with_files({"path": "./model.py", "size": 1, "sha256": SHA}), "normal form"),
    "path-double-slash": (_with_files({"path": "a//b", "size": 1, "sha256": SHA}), "normal form"),
    "path-nul": (_with_files({"path": "a\0b", "size": 1, "sha256": SHA}), "normal form"),
    "path-surrogate": (b'{"manifest_format": 1, "files": [{"path": "\\ud800", "size": 1, "sha256": "' + SHA.encode()
                       + b'"}]}', "not valid Unicode"),
    "path-itself": (_with_files({"path": "manifest.json", "size": 1, "sha256": SHA}), "lists itself"),
    "size-string": (_with_files({"path": "a", "size": "1", "sha256": SHA}), "size must be a non-negative integer"),
    "size-negative": (_with_files({"path": "a", "size": -1, "sha256": SHA}), "size must be a non-negative integer"),
    "size-float": (_with_files({"path": "a", "size": 1.0, "sha256": SHA}), "size must be a non-negative integer"),
    "size-bool": (_with_files({"path": "a", "size": True, "sha256": SHA}), "size must be a non-negative integer"),
    "size-huge": (_with_files({"path": "a", "size": 1 << 64, "sha256": SHA}), "size must be a non-negative integer"),
    "sha-short": (_with_files({"path": "a", "size": 1, "sha256": "abc"}), "64 lowercase hex"),
    "sha-upper": (_with_files({"path": "a", "size": 1, "sha256": SHA.upper()}), "64 lowercase hex"),
    "sha-list": (_with_files({"path": "a", "size": 1, "sha256": [SHA]}), "64 lowercase hex"),
    "duplicate": (_with_files({"path": "a", "size": 1, "sha256": SHA}, {"path": "a", "size": 1, "sha256": SHA}),
                  "listed twice"),
    "file-and-folder": (_with_files({"path": "a", "size": 1, "sha256": SHA}, {"path": "a/b", "size": 1, "sha256": SHA}),
                        "listed as a file and is also a folder"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_malformed_manifest_is_a_manifest_error(case: str) -> None:
    raw, message = MALFORMED[case]
    with pytest.raises(ManifestError, match=message) as caught:
        parse_manifest(raw)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300, "one short line"


def test_a_good_manifest_parses() -> None:
    manifest = parse_manifest(json.dumps(GOOD).encode())
    assert manifest.total_bytes == 3 and set(manifest.files) == {"model.py"} and manifest.folders == frozenset()


# --- fuzz: a seeded loop over mutated manifests ----------------------------------------------------------

def test_fuzzed_manifests_parse_or_raise_manifest_error_only() -> None:
    outcomes = {"parsed": 0, "refused": 0}
    for raw in mutated_manifests(500):
        try:
            parse_manifest(raw)
            outcomes["parsed"] += 1
        except ManifestError as err:
            assert "\n" not in str(err)
            outcomes["refused"] += 1
    assert outcomes["refused"] > 250 and outcomes["parsed"] > 0, outcomes


# --- verify_tree: a dir checked against its manifest ------------------------------------------------------

TREE = {"model.py": b"print(1)\n", "lora_endpoint/handler/entry.py": b"def handle(i): ...\n"}


def _tree(root: Path) -> Path:
    for name, data in TREE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "manifest.json").write_bytes(manifest_for(TREE))
    return root


def test_verify_tree_accepts_an_untouched_tree(tmp_path: Path) -> None:
    assert verify_tree(_tree(tmp_path))["manifest_format"] == 1


def _link_to_model_py(root: Path) -> None:
    (root / HANDLER / "link.py").symlink_to(root / "model.py")


def _replace_manifest_with_a_link(root: Path) -> None:
    (root / "elsewhere.json").write_bytes((root / "manifest.json").read_bytes())
    (root / "manifest.json").unlink()
    (root / "manifest.json").symlink_to(root / "elsewhere.json")


BROKEN_TREES = {
    "changed": (lambda r: (r / "model.py").write_bytes(b"print(2)\n"), "sha256 differs"),
    "resized": (lambda r: (r / "model.py").write_bytes(b"import os\n" * 3), "bytes, manifest.json says"),
    "extra": (lambda r: (r / HANDLER / "evil.py").write_bytes(b""), "'lora_endpoint/handler/evil.py'"),
    "pycache": (lambda r: (r / HANDLER / "__pycache__").mkdir() or (r / HANDLER / "__pycache__" / "e.pyc")
                .write_bytes(b""), "'lora_endpoint/handler/__pycache__/e.pyc'"),
    "empty-folder": (lambda r: (r / "adapters").mkdir(), "'adapters'.* not needed"),
    "missing": (lambda r: (r / HANDLER / "entry.py").unlink(), "'lora_endpoint/handler/entry.py'.* missing"),
    "symlink": (_link_to_model_py, "symbolic link"),
    "fifo": (lambda r: os.mkfifo(r / "pipe"), "not a regular file"),
    "no-manifest": (lambda r: (r / "manifest.json").unlink(), "has no manifest.json"),
    "manifest-link": (_replace_manifest_with_a_link, "is not a regular file"),
    "manifest-list": (lambda r: (r / "manifest.json").write_text("[]"), "must be a JSON object"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TREES))
def test_verify_tree_refuses_any_difference(case: str, tmp_path: Path) -> None:
    change, message = BROKEN_TREES[case]
    root = _tree(tmp_path)
    change(root)
    with pytest.raises(ManifestError, match=message):
        verify_tree(root)
