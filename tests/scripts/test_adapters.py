"""lora_endpoint/commands/adapters.py: adapter inference components through botocore's Stubber (moto does not model
inference components; the Stubber checks every request against the sagemaker service model and every
canned response against its output shape), the upload through moto's S3, and the local mode against the
local endpoint serving a stand-in entry module."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from lora_endpoint.clients.adapter_artifact import ArtifactError, check_adapter, pack_adapter
from lora_endpoint.commands.adapters import Aws, main
from lora_endpoint.local.app import create_app
from lora_endpoint.local.package import ServedModel, resolve
from tests.docs import doc
from tests.local import fake_adapter_entry as fake
from tests.local.conftest import Running, start
from tests.sagemaker_stubs import ARN, BASE, ENDPOINT, described, listed

BUCKET = "adapters-bucket"


class Sagemaker:
    """A sagemaker client with a Stubber, and the parameters each call was made with."""

    def __init__(self) -> None:
        self.client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x",
                                   aws_secret_access_key="x")
        self.stub = Stubber(self.client)
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.client.meta.events.register("provide-client-params.sagemaker.*", self._capture)
        self.stub.activate()

    def _capture(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.sent.append((model.name, dict(params)))

    def describe(self, name: str, answer: dict[str, Any] | None) -> None:
        if answer is None:
            self.stub.add_client_error("describe_inference_component", "ValidationException",
                                       f'Could not find inference component "{ARN}:inference-component/{name}".',
                                       400, expected_params={"InferenceComponentName": name})
        else:
            self.stub.add_response("describe_inference_component", answer, {"InferenceComponentName": name})

    def endpoint_has(self, *components: dict[str, Any]) -> None:
        names = sorted(c["InferenceComponentName"] for c in components)
        self.stub.add_response("list_inference_components", listed(*names),
                               {"EndpointNameEquals": ENDPOINT, "MaxResults": 100})
        for component in sorted(components, key=lambda c: c["InferenceComponentName"]):
            self.describe(component["InferenceComponentName"], component)

    def calls(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.sent if name == operation]


@pytest.fixture
def sm() -> Iterator[Sagemaker]:
    stubbed = Sagemaker()
    yield stubbed
    stubbed.stub.assert_no_pending_responses()


@pytest.fixture
def s3() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Clock:
    """Time that moves only when the script sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def run(args: list[str], sm: Sagemaker, s3: Any = None, clock: Clock | None = None) -> int:
    clock = clock or Clock()
    return main(args, aws=Aws(sm.client, s3), sleep=clock.sleep, clock=clock)


@pytest.fixture
def alpha(tiny_model_dir: Path) -> Path:
    return tiny_model_dir / "adapters" / "alpha"


# --- add, deployed -------------------------------------------------------------------------------------


def test_add_checks_packs_uploads_creates_and_waits(sm: Sagemaker, s3: Any, alpha: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN an endpoint with one base component and no component named support
    sm.describe("support", None)
    sm.endpoint_has(described(BASE))
    sm.stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/support"},
                         {"InferenceComponentName": "support", "EndpointName": ENDPOINT, "Specification": ANY})
    sm.describe("support", described("support", "Creating", base=BASE))
    sm.describe("support", described("support", "InService", base=BASE))
    clock = Clock()
    # WHEN the adapter folder is added
    code = run(["add", "support", str(alpha), "--endpoint-name", ENDPOINT, "--upload", f"s3://{BUCKET}/adapters",
                "--poll", "5"], sm, s3, clock)
    # THEN it is uploaded under its content hash, and the component names the base and that archive
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.splitlines()[-1] == "support"
    (params,) = sm.calls("CreateInferenceComponent")
    url = params["Specification"]["Container"]["ArtifactUrl"]
    assert params["Specification"]["BaseInferenceComponentName"] == BASE
    assert set(params["Specification"]) == {"BaseInferenceComponentName", "Container"}  # no compute of its own
    packed = pack_adapter(check_adapter("support", alpha), tmp_path)
    assert url == f"s3://{BUCKET}/adapters/{packed.sha256[:16]}/adapter.tar.gz"
    obj = s3.get_object(Bucket=BUCKET, Key=url.split(f"{BUCKET}/", 1)[1])
    assert obj["Metadata"]["content-sha256"] == packed.sha256
    with tarfile.open(fileobj=io.BytesIO(obj["Body"].read()), mode="r:gz") as tar:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(tar.getnames())  # at the root
    assert "Creating" in err and clock.sleeps == [5.0]


def test_packing_is_deterministic(alpha: Path, tmp_path: Path) -> None:
    info = check_adapter("support", alpha)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert pack_adapter(info, tmp_path / "a").sha256 == pack_adapter(info, tmp_path / "b").sha256


def test_a_failed_component_is_exit_1_with_its_reason(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", None)
    sm.endpoint_has(described(BASE))
    sm.stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/support"})
    sm.describe("support", described("support", "Failed", base=BASE, failure="adapter rank 64 exceeds max_lora_rank"))
    code = run(["add", "support", "s3://b/support.tar.gz", "--endpoint-name", ENDPOINT], sm)
    assert code == 1
    assert "adapter rank 64 exceeds max_lora_rank" in capsys.readouterr().err


def test_waiting_too_long_is_exit_3(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", None)
    sm.endpoint_has(described(BASE))
    sm.stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/support"})
    for _ in range(3):
        sm.describe("support", described("support", "Creating", base=BASE))
    code = run(["add", "support", "s3://b/support.tar.gz", "--endpoint-name", ENDPOINT, "--timeout", "25",
                "--poll", "10"], sm)
    assert code == 3
    assert "still Creating" in capsys.readouterr().err


def test_no_wait_returns_once_created(sm: Sagemaker) -> None:
    sm.describe("support", None)
    sm.endpoint_has(described(BASE))
    sm.stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/support"})
    assert run(["add", "support", "s3://b/support.tar.gz", "--endpoint-name", ENDPOINT, "--no-wait"], sm) == 0


@pytest.mark.parametrize(("name", "src", "problem"), [
    ("support_bot", "s3://b/a.tar.gz", "not an inference component name"),
    ("../x", "s3://b/a.tar.gz", "not a safe identifier"),
    ("support", "s3://b/adapters/support/", "not a .tar.gz"),
    ("support", "LOCAL", "needs --upload"),
])
def test_bad_names_and_sources_are_exit_2_before_any_call(sm: Sagemaker, alpha: Path, name: str, src: str,
                                                          problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["add", name, str(alpha) if src == "LOCAL" else src, "--endpoint-name", ENDPOINT], sm)
    assert code == 2
    assert problem in capsys.readouterr().err
    assert sm.sent == []


def test_a_broken_adapter_folder_is_exit_2_before_any_call(sm: Sagemaker, alpha: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(alpha, broken)
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "r": config["r"] * 2}))  # rank != weights
    code = run(["add", "support", str(broken), "--endpoint-name", ENDPOINT, "--upload", f"s3://{BUCKET}/a"], sm)
    assert code == 2
    assert "support" in capsys.readouterr().err
    assert sm.sent == []


def _renamed_base(base: Path, tmp_path: Path) -> Path:
    """The same base under another name (folder and ``_name_or_path``)."""
    other = tmp_path / "other-model"
    shutil.copytree(base, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "_name_or_path": "other-model"}))
    return other


def test_max_lora_rank_and_base_model_checks(sm: Sagemaker, alpha: Path, tiny_model_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["add", "support", str(alpha), "--endpoint-name", ENDPOINT, "--upload", f"s3://{BUCKET}/a",
                "--max-lora-rank", "1"], sm)
    assert code == 2 and "above --max-lora-rank 1" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="base_model_name_or_path"):  # declared for another base
        check_adapter("support", alpha, base_model=_renamed_base(tiny_model_dir / "base", tmp_path))
    # the tiny base's module shapes agree with the adapter: nothing is refused
    assert check_adapter("support", alpha, base_model=tiny_model_dir / "base").name == "support"


def test_base_component_is_found_or_must_be_named(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    two = (described(BASE), described("other-base"), described("old", base=BASE))
    sm.describe("support", None)
    sm.endpoint_has(*two)
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT], sm) == 2
    assert "choose one with --base-component" in capsys.readouterr().err
    # WHEN one is named THEN that one is used
    sm.describe("support", None)
    sm.endpoint_has(*two)
    sm.stub.add_response("create_inference_component", {"InferenceComponentArn": f"{ARN}:inference-component/support"})
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT, "--base-component", "other-base",
                "--no-wait"], sm) == 0
    assert sm.calls("CreateInferenceComponent")[0]["Specification"]["BaseInferenceComponentName"] == "other-base"
    # an adapter component is no base; an endpoint without components has none
    sm.describe("support", None)
    sm.endpoint_has(*two)
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT, "--base-component", "old"], sm) == 2
    sm.describe("support", None)
    sm.endpoint_has()
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT], sm) == 2
    assert "no base inference component" in capsys.readouterr().err


def test_a_name_taken_is_exit_2(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", described("support", base=BASE))
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT], sm) == 2
    assert "exists already" in capsys.readouterr().err


def test_aws_refusals_are_exit_1_with_the_code(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", None)
    sm.endpoint_has(described(BASE))
    sm.stub.add_client_error("create_inference_component", "ResourceLimitExceeded", "too many components", 400)
    assert run(["add", "support", "s3://b/a.tar.gz", "--endpoint-name", ENDPOINT], sm) == 1
    assert "ResourceLimitExceeded: too many components" in capsys.readouterr().err


# --- remove and list, deployed ---------------------------------------------------------------------------


def test_remove_deletes_and_waits_until_gone(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", described("support", base=BASE))
    sm.stub.add_response("delete_inference_component", {}, {"InferenceComponentName": "support"})
    sm.describe("support", described("support", "Deleting", base=BASE))
    sm.describe("support", None)
    assert run(["remove", "support", "--endpoint-name", ENDPOINT], sm) == 0
    assert "is gone" in capsys.readouterr().err


@pytest.mark.parametrize(("answer", "problem"), [
    (None, "there is no inference component"),
    (described("support"), "is a base inference component"),
    (described("support", base=BASE, endpoint="elsewhere"), "is on endpoint elsewhere"),
])
def test_remove_refuses_what_is_not_this_endpoint_s_adapter(sm: Sagemaker, answer: dict[str, Any] | None,
                                                            problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    sm.describe("support", answer)
    assert run(["remove", "support", "--endpoint-name", ENDPOINT], sm) == 2
    assert problem in capsys.readouterr().err
    assert sm.calls("DeleteInferenceComponent") == []


def test_list_shows_base_and_adapter_components(sm: Sagemaker, capsys: pytest.CaptureFixture[str]) -> None:
    sm.endpoint_has(described(BASE), described("support", "Creating", base=BASE, artifact="s3://b/s.tar.gz"))
    assert run(["list", "--endpoint-name", ENDPOINT], sm) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0][:3] == ["NAME", "KIND", "STATUS"]
    assert rows[1][:4] == [BASE, "base", "(lora-model)", "InService"]
    assert rows[2] == ["support", "adapter", "of", BASE, "Creating", "s3://b/s.tar.gz"]
    sm.endpoint_has(described(BASE), described("support", base=BASE))
    assert run(["list", "--endpoint-name", ENDPOINT, "--json"], sm) == 0
    kinds = {item["name"]: item["kind"] for item in json.loads(capsys.readouterr().out)}
    assert kinds == {BASE: "base", "support": "adapter"}


# --- the command line ---------------------------------------------------------------------------------


def test_help_documents_exit_codes_and_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ([], ["add"], ["remove"], ["list"]):
        with pytest.raises(SystemExit) as exited:
            main([*command, "--help"])
        assert exited.value.code == 0
        text = capsys.readouterr().out
        assert "Exit codes:" in text and "3    timed out waiting" in text


@pytest.mark.parametrize("args", [
    ["add", "a", "/x", "--local", "http://h:1", "--upload", "s3://b/p"],
    ["add", "a", "/x", "--endpoint-name", ENDPOINT, "--pin"],
    ["remove", "a", "--endpoint-name", ENDPOINT, "--alias", "A"],
    ["list"],
    ["list", "--local", "http://h:1", "--endpoint-name", ENDPOINT],
])
def test_options_of_the_other_kind_of_endpoint_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2


# --- local ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    pkg = fake.write_package(tmp_path_factory.mktemp("fake") / "async", "async")
    running = start(create_app(ServedModel.from_spec(resolve(pkg, allow_no_manifest=True))))
    try:
        yield running
    finally:
        running.stop()


def test_local_add_list_remove(local_server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "support"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)  # a relative SRC reaches the server as an absolute path
    assert main(["add", "support", "support", "--local", local_server.url, "--pin"]) == 0
    assert capsys.readouterr().out.strip() == "Adapter support registered"
    assert fake.ADAPTERS["support"]["src"] == str(folder) and fake.ADAPTERS["support"]["pin"] == "true"
    assert main(["list", "--local", local_server.url]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["support", "adapter", fake.BASE] in rows and [fake.BASE, "base"] in rows
    assert main(["remove", "support", "--local", local_server.url]) == 0
    assert capsys.readouterr().out.strip() == "Adapter support unregistered"
    # WHEN it is removed again THEN the handler's 404 is exit 1 with its type and message
    assert main(["remove", "support", "--local", local_server.url]) == 1
    assert "404: unknown_adapter: adapter 'support' is not registered" in capsys.readouterr().err


def test_local_refusal_and_unreachable_endpoint(local_server: Running, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["add", "support", str(tmp_path / "missing"), "--local", local_server.url]) == 1
    assert "400: invalid_adapter" in capsys.readouterr().err
    assert main(["list", "--local", "http://127.0.0.1:9"]) == 1
    assert "cannot reach" in capsys.readouterr().err
    assert main(["list", "--local", "ftp://x"]) == 2


def test_readme_names_every_option_of_the_script() -> None:
    import argparse
    import re

    from lora_endpoint.commands.adapters import build_parser

    section = doc("adapters").split("## The operator script", 1)[1].split("<!-- section:", 1)[0]
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags = {flag for sub in commands.choices.values() for action in sub._actions for flag in action.option_strings
             if flag.startswith("--") and flag != "--help"}
    mentioned = set(re.findall(r"(--[a-z][a-z0-9-]+)", section))
    assert flags - mentioned == set(), "README leaves options out"
    assert mentioned - flags == set(), "README names options the script does not have"
