"""The local endpoint's adapter routes as a client sees them: ``POST /adapters``, ``DELETE
/adapters/{name}``, ``GET /v1/models`` (``lora_endpoint/local/adapter_routes.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

ALIAS_HEADER = "X-Amzn-SageMaker-Adapter-Alias"


class LocalError(Exception):
    """The endpoint could not be reached, or answered something that is not its API."""


@dataclass(frozen=True)
class LocalReply:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        """``status`` on success, else the error as ``type: message`` (the project's error body)."""
        if isinstance(self.body, dict):
            if self.ok:
                return str(self.body.get("status", ""))
            kind, text = self.body.get("type"), self.body.get("message")
            if kind and text:
                return f"{kind}: {text}"
        return str(self.body)


def local_src(src: str) -> str:
    """An existing local folder as an absolute path (the server's working dir is not ours); else as given."""
    path = Path(src).expanduser()
    return str(path.resolve()) if not src.startswith("s3://") and path.exists() else src


class LocalAdapters:
    def __init__(self, url: str, *, timeout_s: float = 300.0) -> None:
        import httpx

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"--local must be an http(s) URL such as http://127.0.0.1:8080, got {url!r}")
        self.base = url.rstrip("/")
        self.http = httpx.Client(timeout=timeout_s)

    def _send(self, method: str, path: str, **kwargs: Any) -> LocalReply:
        import httpx

        try:
            response = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as err:
            raise LocalError(f"cannot reach {self.base}: {err}") from None
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return LocalReply(response.status_code, body)

    def add(self, name: str, src: str, *, preload: bool = True, pin: bool = False,
            alias: str | None = None) -> LocalReply:
        body = {"name": name, "src": local_src(src), "preload": preload, "pin": pin}
        return self._send("POST", "/adapters", json=body, headers={ALIAS_HEADER: alias} if alias else {})

    def remove(self, name: str, *, alias: str | None = None) -> LocalReply:
        return self._send("DELETE", f"/adapters/{quote(name, safe='')}",
                          headers={ALIAS_HEADER: alias} if alias else {})

    def models(self) -> list[dict[str, Any]]:
        reply = self._send("GET", "/v1/models")
        data = reply.body.get("data") if reply.ok and isinstance(reply.body, dict) else None
        if not isinstance(data, list):
            raise LocalError(f"GET {self.base}/v1/models answered {reply.status}: {reply.message}")
        return [item for item in data if isinstance(item, dict)]
