"""The local endpoint: a model package served on localhost through the container's ``handle()`` path,
in the DJL mode (async or sync) its ``serving.properties`` names.

```
package.py         find the package (model.tar.gz, package dir, plain model dir), its DJL mode, load
                   model.py like DJL
djl_io.py          HTTP request <-> DJL Input, a sync-mode Output -> answers (single and batched)
async_frontend.py  DJL's async mode: one await handle() per request, records read as DJL's frontend does
batcher.py         DJL's sync mode: in-process dynamic batcher, batch_size / max_batch_delay
limits.py          request bodies within a size cap and a read deadline (ASGI middleware)
endpoint.py        what every route shares: the served model, its frontend, the drain at shutdown, a
                   streaming response that closes its body when the client goes away
streaming.py       streamed bodies: a sync chunk iterator made async, the drain deadline, error records,
                   closing the handler's generator (plain asyncio)
eventstream.py     AWS event-stream framing (PayloadPart, ModelStreamError)
runtime_api.py     the SageMaker runtime REST API (invoke_endpoint, invoke_endpoint_with_response_stream)
api_routes.py      the API Gateway routes (/predict, /rag, /v1/chat/completions, /health, /model/info)
adapter_registry.py
                   adapters at run time: DJL's register/update/unregister calls into the entry module,
                   and which inference component names are adapters
adapter_routes.py  POST /adapters, DELETE /adapters/{name} (SageMaker's container standard), .../update
                   (DJL), GET /v1/models (OpenAI / vLLM)
metrics.py         GET /metrics: the handler's metric catalog in Prometheus' text format (a telemetry
                   sink for requests, the engine read at scrape time); the local telemetry defaults
playground_page.py GET /playground: the playground's static page (playground/), also served by the
                   lora-endpoint playground proxy
app.py             FastAPI app factory: container contract (/ping, /invocations), JSON errors, lifespan,
                   /local/stats, /metrics, DrainingServer
```
"""

from __future__ import annotations

import re

DEFAULT_ENDPOINT_NAME = "lora-local"
DEFAULT_VARIANT = "AllTraffic"
# InferenceComponentName as botocore's models define it (sagemaker-runtime's invoke operations and
# sagemaker's CreateInferenceComponent alike): the base's name, and every adapter component's.
COMPONENT_NAME_RE = re.compile(r"^[a-zA-Z0-9]([\-a-zA-Z0-9]*[a-zA-Z0-9])?$")
MAX_COMPONENT_NAME = 63


def component_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an inference component's name, or None when it can."""
    if len(name) > MAX_COMPONENT_NAME or not COMPONENT_NAME_RE.fullmatch(name):
        return (f"{name[:100]!r} is not an inference component name: 1-{MAX_COMPONENT_NAME} letters, digits and "
                "'-', starting and ending with a letter or digit")
    return None


def base_component_name(endpoint_name: str) -> str:
    """The base model's inference component name locally, unless one is given: ``<endpoint>-base``."""
    return f"{endpoint_name}-base"
