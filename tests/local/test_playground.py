"""The playground page on the local endpoint: ``GET /playground`` and its assets, with the right content types,
a policy that keeps the page to its own origin, nothing loaded from elsewhere, and no model text as markup."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from lora_endpoint.local import playground_page
from lora_endpoint.local.app import create_app

from .conftest import fake_served


@pytest.fixture(scope="module")
def client() -> TestClient:
    """The local endpoint's app around a stand-in handle: the page needs no model (no lifespan: no load)."""
    return TestClient(create_app(fake_served(lambda inputs: None), endpoint_name="my-local"))


@pytest.mark.parametrize(("path", "media_type"), [
    ("/playground", "text/html"),
    ("/playground/playground.js", "text/javascript"),
    ("/playground/playground.css", "text/css"),
])
def test_the_page_and_its_assets_are_served_with_their_content_types(client: TestClient, path: str,
                                                                     media_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert response.headers["x-content-type-options"] == "nosniff"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert response.content == (playground_page.STATIC_DIR / ({"/playground": "index.html"}.get(
        path) or path.rsplit("/", 1)[1])).read_bytes()


def test_only_the_named_assets_are_served(client: TestClient) -> None:
    for path in ("/playground/index.html", "/playground/..%2Fapp.py", "/playground/nope.js"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["type"] == "not_found"


def test_the_target_route_names_this_endpoint(client: TestClient) -> None:
    info = client.get("/playground/target").json()
    assert info["kind"] == "local" and info["streaming"] is True and info["url"] is None
    assert info["endpoint_name"] == "my-local" and "my-local" in info["target"]


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.inline_scripts = 0
        self.handlers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        self.refs += [v for k, v in values.items() if k in ("src", "href", "action") and v is not None]
        self.handlers += [k for k in values if k.startswith("on")]
        if tag == "script" and "src" not in values:
            self.inline_scripts += 1


def test_the_page_loads_nothing_from_elsewhere() -> None:
    # GIVEN the three files as shipped
    html = (playground_page.STATIC_DIR / "index.html").read_text()
    css = (playground_page.STATIC_DIR / "playground.css").read_text()
    js = (playground_page.STATIC_DIR / "playground.js").read_text()
    # THEN every reference of the HTML is to the page's own origin (or an inline data: icon), no inline code
    refs = _Refs()
    refs.feed(html)
    assert refs.refs and all(r.startswith("/playground/") or r == "data:," for r in refs.refs), refs.refs
    assert refs.inline_scripts == 0 and refs.handlers == []
    # AND the CSS fetches nothing (no url(), no @import)
    assert "url(" not in css and "@import" not in css
    # AND the JS calls only its own origin: fetch() takes paths, never a URL; no module imports or workers
    calls = re.findall(r"fetch\(([^,)]+)", js)
    assert calls and all(re.fullmatch(r'"/[\w/.-]*"|ROUTES\[kind\]', call.strip()) for call in calls), calls
    assert not re.search(r"\bimport\s*\(|^import |new (Worker|WebSocket|EventSource)\(|XMLHttpRequest", js, re.M)
    # AND the only absolute URL anywhere is the SageMaker runtime's, in the text of the curl snippet
    urls = re.findall(r"https?://[\w.${}-]+", html + css + js)
    assert urls and {u for u in urls if "runtime.sagemaker" not in u} == set(), urls


def test_model_output_never_becomes_markup() -> None:
    js = (playground_page.STATIC_DIR / "playground.js").read_text()
    code = re.sub(r"^\s*//.*$", "", js, flags=re.M)  # comments may name what the code avoids
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in code, sink
    assert "textContent" in code


def test_the_page_is_package_data() -> None:
    from tests.docs import ROOT

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    data: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["lora_endpoint.local"]
    shipped = {p.name for p in playground_page.STATIC_DIR.iterdir()}
    assert shipped == {"index.html", *playground_page.ASSETS}
    for name in shipped:
        assert any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), f"playground/{name}") for p in patterns), name
