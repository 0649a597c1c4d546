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
app.py             FastAPI app factory: container contract (/ping, /invocations), JSON errors, lifespan,
                   /local/stats, DrainingServer
```
"""

from __future__ import annotations

DEFAULT_ENDPOINT_NAME = "lora-local"
DEFAULT_VARIANT = "AllTraffic"
