"""``lora-endpoint deploy``: build, upload and ``cdk deploy`` in one command (the cdk call is recorded)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from lora_endpoint.commands import deploy
from lora_endpoint.commands.checkout import NoCheckout, source_checkout

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    def __init__(self, returncode: int = 0) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.returncode = returncode

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((command, kwargs))
        return subprocess.CompletedProcess(command, self.returncode)


def _flags(tiny_src: Path, tmp_path: Path) -> list[str]:
    return ["--base-model", str(tiny_src / "base"), "--adapter", f"alpha={tiny_src / 'adapters' / 'alpha'}",
            "--output", str(tmp_path / "dist" / "model.tar.gz"), "--no-progress"]


def _context(command: list[str]) -> dict[str, str]:
    return dict(command[i + 1].split("=", 1) for i, arg in enumerate(command) if arg == "-c")


def test_builds_the_package_then_deploys_it_with_the_context(tiny_src: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    code = deploy.main([*_flags(tiny_src, tmp_path), "-c", "region=us-east-1", "-c", "instance_type=ml.g5.xlarge",
                        "--require-approval", "never"], run=run, cdk=Path("/opt/cdk"))
    assert code == 0, capsys.readouterr().err
    [(command, kwargs)] = run.calls
    package = tmp_path / "dist" / "model.tar.gz"
    assert package.is_file()
    assert command[:4] == ["/opt/cdk", "deploy", "--app", f"{sys.executable} -m cdk.app"]
    assert _context(command) == {"region": "us-east-1", "instance_type": "ml.g5.xlarge",
                                 "model_data": str(package.resolve())}
    assert command[-2:] == ["--require-approval", "never"] and kwargs["cwd"] == ROOT
    err = capsys.readouterr().err
    assert "[1/2] building the package" in err and "[2/2] cdk deploy" in err


def test_with_upload_the_stack_reads_the_package_from_s3(tiny_src: Path, tmp_path: Path, aws_env: None) -> None:
    run = Recorder()
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="models")
        code = deploy.main([*_flags(tiny_src, tmp_path), "--upload", "s3://models/lora"], run=run,
                           cdk=Path("/opt/cdk"))
        assert code == 0
        model_data = _context(run.calls[0][0])["model_data"]
        bucket, _, key = model_data.removeprefix("s3://").partition("/")
        assert bucket == "models" and key.startswith("lora/") and key.endswith("model.tar.gz")
        boto3.client("s3").head_object(Bucket=bucket, Key=key)  # the object the stack will read exists


def test_synth_runs_the_app_with_the_context_and_an_existing_package_skips_the_build(tmp_path: Path) -> None:
    package = tmp_path / "model.tar.gz"
    package.write_bytes(b"x")
    run = Recorder()
    assert deploy.main(["--package", str(package), "--synth", "-c", "region=eu-west-1"], run=run) == 0
    [(command, kwargs)] = run.calls
    assert command == [sys.executable, "-m", "cdk.app"] and kwargs["cwd"] == ROOT
    # The context the CDK CLI would pass (cdk.json's, then the command line's), and the checkout's cdk.out/.
    assert json.loads(kwargs["env"]["CDK_CONTEXT_JSON"]) == {"region": "eu-west-1",
                                                             "model_data": str(package.resolve())}
    assert kwargs["env"]["CDK_OUTDIR"] == str(ROOT / "cdk.out")


def test_synth_writes_a_template_for_the_built_package(tiny_src: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The real thing, offline: build from adapter folders, synthesize (cdk-nag runs), read the template."""
    monkeypatch.setenv("CDK_OUTDIR", str(tmp_path / "cdk.out"))
    assert deploy.main([*_flags(tiny_src, tmp_path), "--synth", "-c", "region=us-east-1"]) == 0
    template = json.loads((tmp_path / "cdk.out" / "LoraEndpoint.template.json").read_text())
    [model] = [r for r in template["Resources"].values() if r["Type"] == "AWS::SageMaker::Model"]
    source = model["Properties"]["PrimaryContainer"]["ModelDataSource"]["S3DataSource"]
    # The built archive as a hashed asset (with no model_data the stack would read an S3 prefix instead).
    assert (source["S3DataType"], source["CompressionType"]) == ("S3Object", "Gzip")
    assert list((tmp_path / "cdk.out").glob("asset.*.tar.gz"))


def test_dry_run_prints_the_steps_and_runs_nothing(tiny_src: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    assert deploy.main([*_flags(tiny_src, tmp_path), "-c", "region=eu-west-1", "--dry-run"], run=run) == 0
    out = capsys.readouterr().out
    assert not run.calls and not (tmp_path / "dist").exists()
    assert out.startswith("lora-endpoint package build --base-model") and "-c region=eu-west-1" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["-c", "model_data=s3://x/y"], "deploy sets it from the package"),
    (["-c", "novalue"], "expected KEY=VALUE"),
    (["--package", "/nonexistent/model.tar.gz"], "no such file"),
    (["--package", "/nonexistent/model.tar.gz", "--merge"], "would be ignored"),
    (["--synth", "--adapter", "a=out/a"], "give --base-model"),
])
def test_bad_input_is_one_line_and_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    run = Recorder()
    assert deploy.main(argv, run=run, cdk=Path("/opt/cdk")) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not run.calls


def test_a_broken_adapter_stops_before_cdk_with_exit_2(tiny_src: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    run = Recorder()
    flags = ["--base-model", str(tiny_src / "base"), "--adapter", f"bad={broken}", "--output",
             str(tmp_path / "model.tar.gz"), "--no-progress"]
    assert deploy.main(flags, run=run, cdk=Path("/opt/cdk")) == 2
    assert "error:" in capsys.readouterr().err and not run.calls
    assert not (tmp_path / "model.tar.gz").exists()


def test_a_failed_cdk_run_is_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = tmp_path / "model.tar.gz"
    package.write_bytes(b"x")
    assert deploy.main(["--package", str(package)], run=Recorder(returncode=3), cdk=Path("/opt/cdk")) == 1
    assert "cdk deploy exited 3" in capsys.readouterr().err


def test_commands_that_need_a_checkout_say_so() -> None:
    assert source_checkout("deploy", "cdk.json") == ROOT
    with pytest.raises(NoCheckout, match="runs from a source checkout"):
        source_checkout("deploy", "no-such-file.json")
