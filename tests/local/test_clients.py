"""invoke.py, smoke_test.py and load_test.py against the local endpoint (and against broken ones)."""

from __future__ import annotations

import json

import pytest

from scripts import invoke, load_test, smoke_test

from .conftest import error_type, fake_served, free_port, start


def test_invoke_prints_text_status_and_latency(server, capsys) -> None:
    code = invoke.main(["--endpoint-url", server.url, "--prompt", "Hello", "--adapter", "alpha",
                        "--max-new-tokens", "5"])
    out, err = capsys.readouterr()
    assert code == 0 and out.strip() and "status 200" in err and " ms" in err


def test_invoke_streams_and_reports_errors_by_exit_code(server, capsys) -> None:
    assert invoke.main(["--endpoint-url", server.url, "--prompt", "Hello", "--stream", "--max-new-tokens", "4"]) == 0
    assert "4 chunks" in capsys.readouterr().err
    assert invoke.main(["--api-url", server.url, "--route", "chat", "--prompt", "Hi", "--adapter", "nope"]) == 1
    out, err = capsys.readouterr()
    assert error_type(json.loads(out)) == "unknown_adapter" and "status 404" in err
    assert invoke.main(["--endpoint-url", server.url, "--body", "[1]"]) == 2


def test_invoke_against_nothing_is_exit_1_and_names_the_url(capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert invoke.main(["--api-url", url, "--prompt", "Hi", "--timeout", "5"]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"could not reach {url}/predict: ") and "status unreachable" in err
    assert "Traceback" not in out + err


def test_invoke_names_an_inference_component_as_the_runtime_takes_it(server, capsys) -> None:
    def answer(*flags: str) -> str:
        assert invoke.main(["--endpoint-url", server.url, "--prompt", "Hello", "--max-new-tokens", "5",
                            "--raw", *flags]) == 0
        return json.loads(capsys.readouterr().out)["generated_text"]

    # the base component answers as the base model; an adapter's component as that adapter
    assert answer("--inference-component", "lora-local-base") == answer()
    assert answer("--inference-component", "alpha") == answer("--adapter", "alpha") != answer()
    # a component the endpoint does not have: the runtime's ValidationError, exit 1
    assert invoke.main(["--endpoint-url", server.url, "--prompt", "Hi", "--inference-component", "nope"]) == 1
    out, err = capsys.readouterr()
    assert "status 400" in err and "nope" in out


@pytest.mark.parametrize(("flags", "message"), [
    (["--inference-component", "bad_name"], "is not an inference component name"),
    (["--api-url", "http://127.0.0.1:1", "--inference-component", "base"], "is for boto3"),
])
def test_invoke_refuses_a_component_it_cannot_send(flags, message, capsys) -> None:
    assert invoke.main(["--endpoint-url", "http://127.0.0.1:1", "--prompt", "Hi", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_invoke_help_explains(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        invoke.main(["--help"])
    assert caught.value.code == 0
    assert "--endpoint-url" in capsys.readouterr().out


@pytest.mark.parametrize("door", ["boto3", "api", "component"])
def test_smoke_test_passes_against_the_local_endpoint(server, capsys, door) -> None:
    target = {"boto3": ["--endpoint-url", server.url], "api": ["--api-url", server.url],
              "component": ["--endpoint-url", server.url, "--inference-component", "lora-local-base"]}[door]
    code = smoke_test.main([*target, "--max-new-tokens", "4"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "generate (alpha)" in out and "generate (beta)" in out and "9/9 passed" in out


def test_smoke_test_fails_against_nothing(capsys) -> None:
    assert smoke_test.main(["--endpoint-url", f"http://127.0.0.1:{free_port()}", "--timeout", "5"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_smoke_test_fails_against_a_handler_that_always_errors(capsys) -> None:
    from djl_python import Output  # the compatible module: the server put it on sys.path

    def broken(inputs):  # type: ignore[no-untyped-def]
        return None if inputs.is_empty() else Output().error("kaput", code=500)

    running = start(_app(broken))
    try:
        assert smoke_test.main(["--api-url", running.url, "--json"]) == 1
        report = json.loads(capsys.readouterr().out)
        assert not report["passed"] and report["checks"][0]["passed"]  # healthy, yet every request fails
    finally:
        running.stop()


def test_load_test_small_run_has_no_errors(server, capsys) -> None:
    code = load_test.main(["--endpoint-url", server.url, "--concurrency", "4", "--requests", "12",
                           "--adapters", "base,alpha,beta", "--max-new-tokens", "4", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0, report
    assert report["requests"] == report["ok"] == 12 and report["errors"] == {}
    assert report["generated_tokens"] > 0 and report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_load_test_streaming_through_the_api_routes_stops_by_duration(server, capsys) -> None:
    code = load_test.main(["--api-url", server.url, "--concurrency", "2", "--duration", "1.5", "--stream",
                           "--max-new-tokens", "3", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["requests"] >= 1 and report["errors"] == {}
    assert report["elapsed_s"] < 1.5 + 30  # the last requests finish; no new one starts after the duration


def _app(handle):  # type: ignore[no-untyped-def]
    from lora_endpoint.local.app import create_app

    return create_app(fake_served(handle), batch_size=4, max_batch_delay_ms=10)
