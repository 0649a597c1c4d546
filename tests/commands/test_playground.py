"""``lora-endpoint playground``: its help, and a wrong command line is exit 2 with one line and nothing started.
(What the proxy forwards is in tests/local/test_playground_proxy.py, against a running local endpoint.)"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from lora_endpoint import cli
from lora_endpoint.commands import playground


def test_help_shows_invokes_target_flags_and_the_loopback_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["playground", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: lora-endpoint playground")
    for flag in ("--endpoint-url", "--endpoint-name", "--region", "--profile", "--api-url", "--sigv4", "--api-key",
                 "--host", "--port", "--open", "--no-stream"):
        assert flag in text, flag
    assert "default: 127.0.0.1" in text


@pytest.fixture
def never_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    def refuse(self: object) -> None:
        raise AssertionError("a bad command line started the proxy")

    monkeypatch.setattr(uvicorn.Server, "run", refuse)


@pytest.mark.parametrize("argv", [
    ["--bogus"],
    ["--endpoint-url", "http://127.0.0.1:8080", "--port", "0"],
    ["--endpoint-url", "http://127.0.0.1:8080", "--port", "eighty"],
    ["--endpoint-url", "http://127.0.0.1:8080", "--timeout", "0"],
    [],  # no target
    ["--api-url", "ftp://example.com/prod"],
])
def test_a_bad_command_line_is_exit_2_with_one_line(argv: list[str], never_serve: None,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = cli.main(["playground", *argv])
    except SystemExit as exit_info:
        code = exit_info.code  # type: ignore[assignment]
    assert code == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lora-endpoint playground: error: "), captured.err
    assert captured.out == "" and "Traceback" not in captured.err


def test_a_port_in_use_is_exit_1_with_one_line(never_serve: None, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = playground.main(["--endpoint-url", "http://127.0.0.1:8080", "--port", str(port)])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot listen on 127.0.0.1:{port}" in err[0]


def test_an_unknown_aws_profile_is_exit_2_with_one_line(never_serve: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "config"
    empty.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    assert playground.main(["--endpoint-name", "lora-endpoint", "--region", "us-east-1", "--profile", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nope" in err[0] and "--profile" in err[0], err
