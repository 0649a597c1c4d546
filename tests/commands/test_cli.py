"""``lora-endpoint``: one entry point that lists and runs every command, and the old paths that still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lora_endpoint import __version__, cli

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ("package", "serve", "invoke", "smoke", "load", "train", "bench", "deploy", "adapters", "playground",
            "demo")


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for name in EXPECTED:
        assert f"\n  {name} " in text, name
    assert set(cli.COMMANDS) == set(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_each_subcommand_has_its_own_help_under_its_full_name(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([name, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: lora-endpoint {name}" in capsys.readouterr().out


def test_no_command_or_an_unknown_one_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([]) == 2
    assert "usage: lora-endpoint COMMAND" in capsys.readouterr().err
    assert cli.main(["deplyo"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'deplyo'" in err and "deploy" in err and "Traceback" not in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lora-endpoint {__version__}"


def test_the_console_script_and_python_m_run_it_without_importing_torch() -> None:
    script = Path(sys.executable).with_name("lora-endpoint")
    if not script.exists():
        pytest.skip("lora-endpoint is not installed in this environment")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0 and "deploy" in out.stdout
    code = "import sys, runpy; sys.argv = ['lora-endpoint', '--help']\ntry:\n runpy.run_module('lora_endpoint')\n" \
           "except SystemExit: pass\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.strip().endswith("False")


@pytest.mark.parametrize(("alias", "command"), [
    ("scripts/invoke.py", "invoke"), ("scripts/smoke_test.py", "smoke"), ("scripts/load_test.py", "load"),
    ("scripts/serve_local.py", "serve"), ("scripts/adapters.py", "adapters"), ("scripts/train_lora.py", "train"),
])
def test_the_old_script_paths_are_aliases(alias: str, command: str) -> None:
    out = subprocess.run([sys.executable, str(ROOT / alias), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"usage: lora-endpoint {command}" in out.stdout


def test_the_old_console_scripts_are_aliases() -> None:
    for name, command in (("lora-package", "package"), ("lora-serve-local", "serve")):
        script = Path(sys.executable).with_name(name)
        if not script.exists():
            pytest.skip(f"{name} is not installed in this environment")
        out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and f"usage: lora-endpoint {command}" in out.stdout
