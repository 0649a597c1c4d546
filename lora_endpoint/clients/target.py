"""One way to call an endpoint, whichever door it is behind.

``RuntimeTarget`` uses boto3's ``sagemaker-runtime`` client (a deployed endpoint, or the local one with
``endpoint_url``); ``HttpTarget`` calls the API Gateway routes (deployed with an API key or SigV4 for
``execute-api``, or the local endpoint's routes). Both answer a ``Reply`` with the status the caller
would see (for boto3 a ``ModelError`` is unwrapped to its ``OriginalStatusCode``), so the smoke and load
tests read the same thing from either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

ADAPTER_HEADER = "X-Amzn-SageMaker-Adapter-Identifier"
ROUTES = {"predict": ("POST", "/predict"), "rag": ("POST", "/rag"), "chat": ("POST", "/v1/chat/completions"),
          "info": ("GET", "/model/info"), "health": ("GET", "/health"), "invoke": ("POST", "/invocations")}


class TargetError(Exception):
    """The target cannot be called at all (bad URL, no credentials): a user error, shown without a trace."""


@dataclass
class Reply:
    status: int
    body: bytes
    latency_s: float
    chunks: int = 0
    content_type: str = ""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class Streamed:
    """An answer read as it arrives (the playground's proxy passes it on): status and content type first,
    then the body in ``chunks``. A failure after the status is known ends ``chunks`` with one error record in
    the stream's own format, as the handler does. Status 0: the endpoint could not be reached."""

    status: int
    content_type: str
    chunks: Iterator[bytes]


class Target(Protocol):
    def call(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False) -> Reply: ...

    def open(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False) -> Streamed: ...

    def describe(self) -> str: ...


def stream_error_record(content_type: str, status: int, error_type: str, message: str) -> bytes:
    """The last record of a stream that failed midway: an SSE event then ``[DONE]`` for chat, else a JSON
    line with ``finish_reason: error`` (the handler's own error records, see docs/handler.md#streaming)."""
    from lora_endpoint.contract.errors import error_body

    body = error_body(status, error_type, message)
    if content_type.startswith("text/event-stream"):
        return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()
    return (json.dumps({**body, "details": {"finish_reason": "error"}}) + "\n").encode()


def _whole(reply: Reply) -> Streamed:
    return Streamed(reply.status, reply.content_type, iter([reply.body]))


def with_adapter(route: str, body: dict[str, Any], adapter: str | None) -> dict[str, Any]:
    """Name the adapter in the body where the shape has a place for it (chat: ``model``)."""
    if not adapter or route in ("info", "health"):
        return body
    key = "model" if route == "chat" or "messages" in body else "adapters"
    return body if key in body else {**body, key: adapter}


class RuntimeTarget:
    """boto3 ``invoke_endpoint`` / ``invoke_endpoint_with_response_stream`` (every route is a body shape).

    ``inference_component`` is the runtime's ``InferenceComponentName`` for every call: on an endpoint with
    inference components the base component (adapters in the package are then named in the body, as
    usual) or an adapter's component (SageMaker tells the container which adapter)."""

    def __init__(self, endpoint_name: str, *, endpoint_url: str | None = None, region: str | None = None,
                 timeout_s: float = 70.0, profile: str | None = None,
                 inference_component: str | None = None) -> None:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        kwargs: dict[str, Any] = {"region_name": region or "us-east-1"} if endpoint_url or region else {}
        if endpoint_url:  # the local endpoint takes any credentials
            kwargs.update(endpoint_url=endpoint_url, aws_access_key_id="local", aws_secret_access_key="local")
        config = Config(read_timeout=timeout_s, connect_timeout=5, retries={"max_attempts": 1, "mode": "standard"})
        self.endpoint_name = endpoint_name
        self.endpoint_url = endpoint_url
        self.profile = None if endpoint_url else profile
        self.inference_component = inference_component
        self._control: Any = None
        try:
            self.session = boto3.Session(profile_name=self.profile)
            self.client = self.session.client("sagemaker-runtime", config=config, **kwargs)
        except BotoCoreError as err:  # an unknown profile, no region
            raise TargetError(f"{err} (see --profile, --region)") from None
        self._adapter: str | None = None
        self.client.meta.events.register("before-sign.sagemaker-runtime.*", self._add_adapter_header)

    def describe(self) -> str:
        component = f", component {self.inference_component}" if self.inference_component else ""
        return f"endpoint {self.endpoint_name}{component}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def _components(self, component: str | None) -> dict[str, str]:
        """The ``InferenceComponentName`` parameter of one call: ``component``, else the target's; none at all
        without either (botocore takes no empty one)."""
        name = component or self.inference_component
        return {"InferenceComponentName": name} if name else {}

    @property
    def control(self) -> Any:
        """The ``sagemaker`` (control plane) client of the same session and region, made on first use."""
        if self._control is None:
            self._control = self.session.client("sagemaker", region_name=self.client.meta.region_name)
        return self._control

    def _add_adapter_header(self, request: Any, **_: Any) -> None:
        if self._adapter:
            request.headers[ADAPTER_HEADER] = self._adapter

    def call(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False, component: str | None = None) -> Reply:
        """One call; ``component`` names the inference component for this call only."""
        from botocore.exceptions import BotoCoreError, ClientError, EventStreamError

        if route == "health":
            return self._health()
        request: dict[str, Any] = (
            {"task": "info"} if route == "info" else with_adapter(route, dict(body or {}), adapter))
        if stream:
            request["stream"] = True
        payload = json.dumps(request).encode()
        self._adapter = adapter
        start = time.perf_counter()
        try:
            if stream:
                streamed = self.client.invoke_endpoint_with_response_stream(
                    EndpointName=self.endpoint_name, Body=payload, ContentType="application/json",
                    **self._components(component))
                parts = [event["PayloadPart"]["Bytes"] for event in streamed["Body"] if "PayloadPart" in event]
                return Reply(200, b"".join(parts), time.perf_counter() - start, len(parts),
                             streamed.get("ContentType", ""))
            whole = self.client.invoke_endpoint(EndpointName=self.endpoint_name, Body=payload,
                                                ContentType="application/json", Accept="application/json",
                                                **self._components(component))
            return Reply(200, whole["Body"].read(), time.perf_counter() - start, 0, whole.get("ContentType", ""))
        except EventStreamError as err:
            return Reply(500, str(err).encode(), time.perf_counter() - start)
        except ClientError as err:
            return _client_error_reply(err, start)
        except BotoCoreError as err:  # connection refused, timeouts, no credentials
            return Reply(0, str(err).encode(), time.perf_counter() - start)
        finally:
            self._adapter = None

    def open(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False, component: str | None = None) -> Streamed:
        """``call``, but a stream's ``PayloadPart`` bytes are handed on as they arrive."""
        from botocore.exceptions import BotoCoreError, ClientError, EventStreamError

        if not stream or route in ("info", "health"):
            return _whole(self.call(route, body, adapter=adapter, component=component))
        request = {**with_adapter(route, dict(body or {}), adapter), "stream": True}
        self._adapter = adapter
        start = time.perf_counter()
        try:
            streamed = self.client.invoke_endpoint_with_response_stream(
                EndpointName=self.endpoint_name, Body=json.dumps(request).encode(), ContentType="application/json",
                **self._components(component))
        except ClientError as err:
            return _whole(_client_error_reply(err, start))
        except BotoCoreError as err:
            return _whole(Reply(0, str(err).encode(), time.perf_counter() - start))
        finally:
            self._adapter = None
        content_type = str(streamed.get("ContentType", ""))

        def chunks() -> Iterator[bytes]:
            try:
                for event in streamed["Body"]:
                    if "PayloadPart" in event:
                        yield event["PayloadPart"]["Bytes"]
            except EventStreamError as err:  # ModelStreamError: the container failed after the first chunk
                yield stream_error_record(content_type, 500, "model_stream_error", str(err))
            except BotoCoreError as err:  # the connection broke or timed out
                yield stream_error_record(content_type, 502, "upstream_error", str(err))

        return Streamed(200, content_type, chunks())

    def _health(self) -> Reply:
        start = time.perf_counter()
        if self.endpoint_url:  # the local endpoint: the container's ping
            import httpx

            try:
                url = self.endpoint_url.rstrip("/") + "/ping"
                response = httpx.get(url, timeout=10)
            except httpx.HTTPError as err:
                return Reply(0, f"could not reach {url}: {err}".encode(), time.perf_counter() - start)
            return Reply(response.status_code, response.content, time.perf_counter() - start)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            status = self.control.describe_endpoint(EndpointName=self.endpoint_name)["EndpointStatus"]
        except (BotoCoreError, ClientError) as err:
            return Reply(0, str(err).encode(), time.perf_counter() - start)
        body = json.dumps({"status": status}).encode()
        return Reply(200 if status == "InService" else 503, body, time.perf_counter() - start)


def _client_error_reply(err: Any, start: float) -> Reply:
    """A botocore ``ClientError`` as the caller would see it: a ``ModelError`` is the container's own status
    and body; any other error is its HTTP status with the AWS error (``Code``, ``Message``) as JSON."""
    meta: dict[str, Any] = dict(err.response)
    if meta.get("Error", {}).get("Code") == "ModelError" and "OriginalStatusCode" in meta:
        return Reply(int(meta["OriginalStatusCode"]), str(meta.get("OriginalMessage", "")).encode(),
                     time.perf_counter() - start)
    status = int(meta.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
    return Reply(status, json.dumps(meta.get("Error", {})).encode(), time.perf_counter() - start)


class HttpTarget:
    """The API Gateway routes (or the local endpoint's), with an API key, SigV4 or no auth."""

    def __init__(self, api_url: str, *, api_key: str | None = None, sigv4: bool = False, region: str | None = None,
                 timeout_s: float = 70.0, profile: str | None = None) -> None:
        import httpx

        parts = urlsplit(api_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TargetError(f"--api-url must be an http(s) URL, got {api_url!r}")
        self.base = api_url.rstrip("/")
        self.api_key = api_key
        self.region = region
        self.credentials = None
        if sigv4:
            import boto3
            from botocore.exceptions import BotoCoreError

            try:
                session = boto3.Session(region_name=region, profile_name=profile)
            except BotoCoreError as err:  # an unknown profile
                raise TargetError(f"{err} (see --profile)") from None
            self.credentials = session.get_credentials()
            self.region = region or session.region_name or _region_from_host(parts.netloc)
            if self.credentials is None:
                raise TargetError("--sigv4 needs AWS credentials (environment, profile or role); none were found")
            if not self.region:
                raise TargetError("--sigv4 needs --region (it is not in the API URL)")
        self.http = httpx.Client(timeout=timeout_s)

    def describe(self) -> str:
        return self.base

    def _headers(self, method: str, url: str, data: bytes | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "*/*"}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        if self.credentials is not None:
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest

            request = AWSRequest(method=method, url=url, data=data or b"", headers=headers)
            SigV4Auth(self.credentials.get_frozen_credentials(), "execute-api", self.region or "").add_auth(request)
            headers = dict(request.headers.items())
        return headers

    def _request(self, route: str, body: dict[str, Any] | None, adapter: str | None,
                 stream: bool) -> tuple[str, str, bytes | None]:
        method, path = ROUTES[route]
        data = None
        if method == "POST":
            payload = with_adapter(route, dict(body or {}), adapter)
            if stream:
                payload["stream"] = True
            data = json.dumps(payload).encode()
        return method, self.base + path, data

    def open(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False) -> Streamed:
        """``call``, but the body is handed on as it arrives (the local routes stream; API Gateway cannot)."""
        import httpx

        method, url, data = self._request(route, body, adapter, stream)
        try:
            request = self.http.build_request(method, url, content=data, headers=self._headers(method, url, data))
            response = self.http.send(request, stream=True)
        except httpx.HTTPError as err:
            return Streamed(0, "", iter([f"could not reach {url}: {err}".encode()]))
        content_type = response.headers.get("content-type", "")

        def chunks() -> Iterator[bytes]:
            try:
                yield from (chunk for chunk in response.iter_bytes() if chunk)
            except httpx.HTTPError as err:
                yield stream_error_record(content_type, 502, "upstream_error", str(err))
            finally:
                response.close()

        return Streamed(response.status_code, content_type, chunks())

    def call(self, route: str, body: dict[str, Any] | None = None, *, adapter: str | None = None,
             stream: bool = False) -> Reply:
        import httpx

        method, url, data = self._request(route, body, adapter, stream)
        start = time.perf_counter()
        try:
            with self.http.stream(method, url, content=data, headers=self._headers(method, url, data)) as response:
                chunks = [chunk for chunk in response.iter_bytes() if chunk]
                return Reply(response.status_code, b"".join(chunks), time.perf_counter() - start, len(chunks),
                             response.headers.get("content-type", ""))
        except httpx.HTTPError as err:
            return Reply(0, f"could not reach {url}: {err}".encode(), time.perf_counter() - start)


def _region_from_host(host: str) -> str | None:
    labels = host.split(".")  # {id}.execute-api.{region}.amazonaws.com
    return labels[2] if len(labels) > 3 and labels[1] == "execute-api" else None


def make_target(*, api_url: str | None = None, endpoint_name: str | None = None, endpoint_url: str | None = None,
                region: str | None = None, api_key: str | None = None, sigv4: bool = False,
                timeout_s: float = 70.0, profile: str | None = None, inference_component: str | None = None) -> Target:
    """The target the command line names: ``--api-url`` or a SageMaker endpoint (``--endpoint-url`` = local)."""
    if api_url:
        if inference_component:
            raise TargetError("--inference-component is for boto3 (--endpoint-name): through --api-url the API "
                              "picks the component from the adapter header")
        return HttpTarget(api_url, api_key=api_key, sigv4=sigv4, region=region, timeout_s=timeout_s, profile=profile)
    if not endpoint_name:
        raise TargetError("give --api-url, or --endpoint-name (and --endpoint-url for the local endpoint)")
    if inference_component is not None:
        from lora_endpoint.local import component_name_problem  # the names botocore's model allows

        problem = component_name_problem(inference_component)
        if problem:
            raise TargetError(f"--inference-component: {problem}")
    return RuntimeTarget(endpoint_name, endpoint_url=endpoint_url, region=region, timeout_s=timeout_s,
                         profile=profile, inference_component=inference_component)


def add_target_args(parser: Any) -> None:
    """The command-line options that pick a target (shared by invoke, smoke_test and load_test)."""
    group = parser.add_argument_group("target (a SageMaker endpoint through boto3, or an API URL)")
    group.add_argument("--endpoint-name", help="SageMaker endpoint name (the local endpoint answers to lora-local)")
    group.add_argument("--endpoint-url",
                       help="runtime URL for boto3, e.g. http://127.0.0.1:8080 for the local endpoint")
    group.add_argument("--region", help="AWS region (default: the AWS config's)")
    group.add_argument("--profile", help="AWS profile for boto3 and --sigv4 (default: the environment's credentials)")
    group.add_argument("--inference-component", metavar="NAME",
                       help="with boto3, on an endpoint with inference components: the component that answers "
                            "(InferenceComponentName): the base one (the stack's BaseInferenceComponentName "
                            "output; lora-local-base locally), with --adapter for an adapter in the package, or "
                            "an adapter's own component")
    group.add_argument("--api-url", help="API Gateway stage URL (or the local endpoint's URL) instead of boto3")
    group.add_argument("--api-key", help="API key for --api-url (sent as x-api-key)")
    group.add_argument("--sigv4", action="store_true", help="sign --api-url requests with SigV4 (execute-api)")
    group.add_argument("--timeout", type=float, default=70.0, help="seconds per request (default: 70)")


def target_from_args(args: Any) -> Target:
    endpoint_name = args.endpoint_name
    if not endpoint_name and args.endpoint_url:
        from lora_endpoint.local import DEFAULT_ENDPOINT_NAME

        endpoint_name = DEFAULT_ENDPOINT_NAME
    return make_target(api_url=args.api_url, endpoint_name=endpoint_name, endpoint_url=args.endpoint_url,
                       region=args.region, api_key=args.api_key, sigv4=args.sigv4, timeout_s=args.timeout,
                       profile=args.profile, inference_component=args.inference_component)
