"""The playground in a real headless Chromium (Playwright), against the local endpoint on the tiny model: one
prompt to the base model and an adapter streams in both columns at once, the answers are the endpoint's (and
differ), a bad setting shows the endpoint's own error, the copied boto3 code runs, and model text that looks
like HTML stays text.

Marker ``browser`` (deselected by default; ``make test-playground``). Needs the ``playwright`` package and a
Chromium: ``LORA_CHROMIUM`` names one, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH,
else Playwright's own download; without them the tests skip and say which is missing. Screenshots go to
``build/test-artifacts/``; ``LORA_PLAYGROUND_SCREENSHOT=PATH`` also writes the page on the demo's model there
(``LORA_PLAYGROUND_PACKAGE``, default ``.demo/model.tar.gz``: the package ``make demo`` leaves behind).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docs import ROOT

from .conftest import Running, free_port, start

pytestmark = pytest.mark.browser

ARTIFACTS = ROOT / "build" / "test-artifacts"
PROMPT = "Hello there, how are"
SETTINGS = {"max_new_tokens": "32", "temperature": "0"}


def _chromium() -> str | None:
    """A Chromium to drive: LORA_CHROMIUM, one on PATH, or None for Playwright's own (if downloaded)."""
    named = os.environ.get("LORA_CHROMIUM")
    if named:
        return named
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright "
                                   "(pip install playwright; a Chromium of the system's will do, see the module doc)")
    executable = _chromium()
    with sync_api.sync_playwright() as playwright:
        if executable is None and not Path(playwright.chromium.executable_path).exists():
            pytest.skip("no Chromium: set LORA_CHROMIUM, put chromium on PATH, or run `playwright install chromium`")
        try:
            launched = playwright.chromium.launch(executable_path=executable)
        except Exception as err:  # a Chromium that does not start here
            pytest.skip(f"Chromium {executable or '(playwright)'} does not start: {str(err).splitlines()[0]}")
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda err: errors.append(str(err)))
    opened.requests = []  # every URL the page asked for
    opened.on("request", lambda request: opened.requests.append(request.url))
    try:
        yield opened
    finally:
        context.close()
    assert errors == [], errors  # no script error on the page


def _open(page: Any, url: str, *, models: list[str]) -> None:
    page.goto(url + "/playground")
    page.wait_for_selector("body[data-ready=true]")
    for box in page.locator("#model-list input").all():
        box.set_checked(box.get_attribute("value") in models)
    assert page.locator("#columns .column").count() == len(models)


def _send(page: Any, timeout_ms: int = 60_000) -> None:
    page.click("#send")
    page.wait_for_selector("body[data-busy=false]", timeout=timeout_ms)


def _column(page: Any, model: str) -> Any:
    return page.locator(f'#columns .column[data-model="{model}"]')


# Records, per column, when its answer changed and how long it was then (set before a send).
WATCH = """() => {
  window.changes = {};
  for (const column of document.querySelectorAll("#columns .column")) {
    const answer = column.querySelector(".answer");
    const seen = window.changes[column.dataset.model] = [];
    new MutationObserver(() => seen.push([performance.now(), answer.textContent.length]))
      .observe(answer, {childList: true, characterData: true, subtree: true});
  }
}"""


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_base_and_adapter_stream_side_by_side(page: Any, server: Running) -> None:
    # GIVEN the page on the local endpoint, with the base model and adapter alpha picked
    base = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    _open(page, server.url, models=[base, "alpha"])
    page.fill("#prompt", PROMPT)
    for name, value in SETTINGS.items():
        page.fill(f"#{name}", value)
    page.evaluate(WATCH)
    # WHEN one prompt goes to both
    _send(page)
    # THEN each column shows what the endpoint answers for its model (greedy), and they differ
    texts = {}
    for model, adapter in ((base, None), ("alpha", "alpha")):
        body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 32, "temperature": 0}}
        direct = httpx.post(server.url + "/predict", json={**body, **({"adapters": adapter} if adapter else {})},
                            timeout=60).json()
        column = _column(page, model)
        texts[model] = column.locator(".answer").text_content()
        assert texts[model] == direct["generated_text"]
        assert column.locator(".stat-status").text_content() == "200"
        assert column.locator(".stat-generated").text_content() == str(direct["details"]["generated_tokens"])
        assert column.locator(".stat-prompt").text_content() == str(direct["details"]["prompt_tokens"])
        assert column.locator(".stat-ttft").text_content().endswith(" ms")
        assert float(column.locator(".stat-rate").text_content()) > 0
    assert texts[base] != texts["alpha"]
    # AND both streamed: each answer grew over many updates, and the two streams overlapped in time
    changes = page.evaluate("window.changes")
    for model in (base, "alpha"):
        lengths = [length for _at, length in changes[model] if length]
        assert len(set(lengths)) > 5, (model, lengths)
    spans = [(changes[m][0][0], changes[m][-1][0]) for m in (base, "alpha")]
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
    _screenshot(page, "playground-tiny.png")
    # AND the page asked nothing of any other origin
    assert page.requests and all(url.startswith(server.url + "/") for url in page.requests), page.requests


@pytest.mark.parametrize("server", ["async"], indirect=True)
@pytest.mark.parametrize(("field", "value", "param"), [("temperature", "-1", "parameters.temperature"),
                                                       ("max_new_tokens", "0", "parameters.max_new_tokens")])
def test_an_invalid_setting_shows_the_endpoints_error(page: Any, server: Running, field: str, value: str,
                                                      param: str) -> None:
    base = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
    _open(page, server.url, models=[base, "alpha"])
    page.fill(f"#{field}", value)
    _send(page)
    # the body the endpoint answers for the same request
    sent = {"inputs": page.input_value("#prompt"), "adapters": "alpha", "stream": True,
            "parameters": {**{"max_new_tokens": 16, "temperature": 0}, field: json.loads(value)}}
    expected = httpx.post(server.url + "/predict", json=sent, timeout=60)
    assert expected.status_code == 400
    for model in (base, "alpha"):
        column = _column(page, model)
        assert column.locator(".error").is_visible()
        line = column.locator(".error-line").text_content()
        assert line.startswith("HTTP 400 - invalid_request - ") and param in line, line
        assert column.locator(".stat-status").text_content() == "400"
        assert column.locator(".answer").text_content() == ""
    assert json.loads(_column(page, "alpha").locator(".error-body").text_content()) == expected.json()


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_chat_keeps_a_history_per_column_and_rag_shows_its_sources(page: Any, server: Running) -> None:
    _open(page, server.url, models=["alpha", "beta"])
    page.check('input[name="mode"][value="chat"]')
    page.fill("#prompt", "Hi")
    _send(page)
    page.fill("#prompt", "And then?")
    _send(page)
    for model in ("alpha", "beta"):
        turns = _column(page, model).locator(".history li")
        assert turns.count() == 4
        assert [turns.nth(i).get_attribute("class") for i in range(4)] == ["user", "assistant"] * 2
        assert turns.nth(2).text_content() == "And then?"
    page.check('input[name="mode"][value="rag"]')
    page.fill("#passages", "[ticket-17] Order 1234 shipped on 3 May.\n\nReturns take 14 days.")
    _send(page)
    sources = _column(page, "alpha").locator(".sources").text_content()
    assert sources.startswith("Sources used: ticket-17, 1; dropped: none")


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_the_copied_boto3_code_runs(page: Any, server: Running) -> None:
    _open(page, server.url, models=["alpha"])
    page.fill("#prompt", PROMPT)
    page.uncheck("#stream")
    _column(page, "alpha").locator("button[data-as=boto3]").click()
    code = _column(page, "alpha").locator(".code").text_content()
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "<copied boto3 code>", "exec"), {})
    answered = httpx.post(server.url + "/predict", json={"inputs": PROMPT, "adapters": "alpha", "parameters": {
        "max_new_tokens": 16, "temperature": 0}}, timeout=60).json()["generated_text"]
    assert repr(answered) in printed.getvalue() or answered in printed.getvalue()
    _column(page, "alpha").locator("button[data-as=curl]").click()
    curl = _column(page, "alpha").locator(".code").text_content()
    assert curl.startswith(f"curl {server.url}/predict") and '"adapters":"alpha"' in curl


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_model_text_that_looks_like_html_stays_text(page: Any, server: Running) -> None:
    # GIVEN an endpoint whose answer is markup (the page's call answered by the test, not the model)
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>'
    _open(page, server.url, models=["alpha"])
    page.route("**/predict", lambda route: route.fulfill(status=200, content_type="application/json", body=json.dumps(
        {"generated_text": evil, "details": {"generated_tokens": 3, "prompt_tokens": 1, "finish_reason": "length"}})))
    _send(page)
    answer = _column(page, "alpha").locator(".answer")
    assert answer.text_content() == evil
    assert answer.locator("img, script").count() == 0
    assert page.evaluate("window.pwned") is None


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_a_stream_that_fails_midway_shows_its_error_record(page: Any, server: Running) -> None:
    # GIVEN a stream that sends one token, then the handler's error record (docs/handler.md, Streaming)
    record = {"code": 500, "type": "internal_error", "message": "internal error",
              "error": {"type": "internal_error", "message": "internal error"}, "details": {"finish_reason": "error"}}
    lines = [{"token": {"id": 1, "text": " Par", "log_prob": None}}, record]
    _open(page, server.url, models=["alpha"])
    page.route("**/predict", lambda route: route.fulfill(status=200, content_type="application/jsonlines",
                                                         body="".join(json.dumps(line) + "\n" for line in lines)))
    _send(page)
    column = _column(page, "alpha")
    # THEN the text so far stays, and the record is shown as the error
    assert column.locator(".answer").text_content() == " Par"
    assert column.locator(".error-line").text_content() == (
        "the stream ended with an error record: internal_error - internal error")
    assert json.loads(column.locator(".error-body").text_content()) == record
    assert column.locator(".stat-finish").text_content() == "error"


@contextlib.contextmanager
def _proxy(target: Any, info: dict[str, Any] | None = None) -> Iterator[str]:
    """``lora-endpoint playground``'s app for ``target`` (telling the page ``info``) on a free port, in a thread."""
    from lora_endpoint.clients.playground import create_proxy_app

    proxy = start(create_proxy_app(target, info=info), wait_ready=False, timeout_s=30)
    try:
        yield proxy.url
    finally:
        proxy.stop()


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_the_page_through_the_proxy(page: Any, server: Running) -> None:
    from lora_endpoint.clients.target import HttpTarget

    # GIVEN the proxy in front of the local endpoint's routes (lora-endpoint playground --api-url URL)
    with _proxy(HttpTarget(server.url)) as url:
        base = httpx.get(server.url + "/v1/models").json()["data"][0]["id"]
        _open(page, url, models=[base, "beta"])
        assert page.locator("#target").text_content() == server.url
        page.fill("#prompt", PROMPT)
        # WHEN one prompt goes to both columns
        _send(page)
        # THEN each shows what the endpoint answers (greedy), streamed through the proxy
        for model, extra in ((base, {}), ("beta", {"adapters": "beta"})):
            direct = httpx.post(server.url + "/predict", timeout=60, json={
                "inputs": PROMPT, "parameters": {"max_new_tokens": 16, "temperature": 0}, **extra}).json()
            assert _column(page, model).locator(".answer").text_content() == direct["generated_text"]
        # AND the copied boto3 code calls the endpoint itself (its runtime API), not the proxy
        page.uncheck("#stream")
        _column(page, "beta").locator("button[data-as=boto3]").click()
        code = _column(page, "beta").locator(".code").text_content()
        assert f'endpoint_url="{server.url}"' in code and 'EndpointName="lora-local"' in code
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, "<copied boto3 code>", "exec"), {})
        assert "generated_text" in printed.getvalue()
        assert all(request.startswith(url + "/") for request in page.requests), page.requests


@pytest.mark.parametrize("server", ["async"], indirect=True)
def test_the_code_for_a_deployed_endpoint_names_its_region_profile_and_component(page: Any, server: Running) -> None:
    from lora_endpoint.clients.playground import target_info
    from lora_endpoint.clients.target import RuntimeTarget

    # GIVEN the proxy as `--endpoint-name prod --region eu-west-1 --profile dev --inference-component
    # prod-base` tells the page (the calls themselves go to the local endpoint's runtime API)
    target = RuntimeTarget("lora-local", endpoint_url=server.url)
    info = {**target_info(target), "kind": "sagemaker", "url": None, "endpoint_name": "prod",
            "region": "eu-west-1", "profile": "dev", "inference_component": "prod-base"}
    with _proxy(target, info) as url:
        _open(page, url, models=["alpha"])
        # WHEN the boto3 and curl code are copied
        _column(page, "alpha").locator("button[data-as=boto3]").click()
        code = _column(page, "alpha").locator(".code").text_content()
        _column(page, "alpha").locator("button[data-as=curl]").click()
        curl = _column(page, "alpha").locator(".code").text_content()
    # THEN they call that endpoint's component with that profile and region, and the code is Python
    assert 'runtime = boto3.Session(profile_name="dev").client("sagemaker-runtime", region_name="eu-west-1")' in code
    assert 'EndpointName="prod", InferenceComponentName="prod-base",' in code and "endpoint_url" not in code
    compile(code, "<copied boto3 code>", "exec")
    assert "runtime.sagemaker.eu-west-1.amazonaws.com/endpoints/prod/" in curl
    assert "-H 'X-Amzn-SageMaker-Inference-Component: prod-base'" in curl


def _screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def test_screenshot_of_the_demo_model(page: Any) -> None:
    """The page on the demo's package (``make demo``), for the README: written to LORA_PLAYGROUND_SCREENSHOT."""
    target = os.environ.get("LORA_PLAYGROUND_SCREENSHOT")
    if not target:
        pytest.skip("set LORA_PLAYGROUND_SCREENSHOT=PATH to write the README's screenshot (make playground-screenshot)")
    package = Path(os.environ.get("LORA_PLAYGROUND_PACKAGE") or ROOT / ".demo" / "model.tar.gz")
    if not package.exists():
        pytest.skip(f"no demo package at {package}: run make demo first (or set LORA_PLAYGROUND_PACKAGE)")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LORA_REQUEST_LOG": "false"}
    server = subprocess.Popen([sys.executable, "-m", "lora_endpoint", "serve", str(package), "--port", str(port),
                               "--log-level", "warning"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/ping").status_code == 200:
                    break
            assert server.poll() is None and time.monotonic() < deadline, "the demo package did not start"
            time.sleep(0.2)
        models = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        _open(page, url, models=models)
        page.fill("#max_new_tokens", "8")
        _send(page)
        assert "Poseidonia" in _column(page, "demo").locator(".answer").text_content()
        shot = _screenshot(page, "playground-demo.png")
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, target)
    finally:
        server.terminate()
        server.wait(30)
