"""``scripts/demo.py`` end to end (train, package, serve, boto3, stream, smoke test), without the CDK synth."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--workdir", str(tmp_path / "demo"), "--skip-cdk"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "base model: 0/10 right" in proc.stdout
    assert "skipped: --skip-cdk" in proc.stdout and "FAILED" not in proc.stdout
    assert (tmp_path / "demo" / "model.tar.gz").is_file()


def test_demo_refuses_to_empty_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "scripts/demo.py", "--workdir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "refusing to empty" in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
