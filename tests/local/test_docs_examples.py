"""The Python examples of docs/local-endpoint.md and docs/adapters.md run, as written, against a local endpoint
on the tiny model (its URL and adapter name put in for the docs' 127.0.0.1:8080 and ``support``)."""

from __future__ import annotations

import contextlib
import io
import re

from tests.docs import doc

from .conftest import Running

BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _blocks(page: str) -> list[str]:
    return BLOCK.findall(doc(page))


def test_the_pages_have_python_examples() -> None:
    assert _blocks("local-endpoint") and _blocks("adapters")


def test_the_python_examples_run_against_the_local_endpoint(server: Running) -> None:
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for source in _blocks("local-endpoint") + [b.replace('"support"', '"alpha"') for b in _blocks("adapters")]:
            exec(compile(source.replace("http://127.0.0.1:8080", server.url), "<docs>", "exec"), namespace)
    printed = out.getvalue()
    assert printed.strip(), "the examples print the answers"
    assert "Traceback" not in printed
