"""The local endpoint: a model package served on localhost through the container's ``handle()`` path.

```
package.py       find the package (model.tar.gz, package dir, plain model dir), load model.py like DJL
djl_io.py        HTTP request <-> DJL Input / Output (single and batched), djl_python compatibility
batcher.py       in-process dynamic batcher: batch_size / max_batch_delay, one handle() per batch
limits.py        request bodies within a size cap and a read deadline (ASGI middleware)
endpoint.py      what every route shares: the served model, the batcher, the drain at shutdown
streaming.py     a handler's chunk iterator as an async body; error records when it fails or expires
eventstream.py   AWS event-stream framing (PayloadPart, ModelStreamError)
runtime_api.py   the SageMaker runtime REST API (invoke_endpoint, invoke_endpoint_with_response_stream)
api_routes.py    the API Gateway routes (/predict, /rag, /v1/chat/completions, /health, /model/info)
app.py           FastAPI app factory: container contract (/ping, /invocations), JSON errors, lifespan,
                 DrainingServer
```
"""

from __future__ import annotations

DEFAULT_ENDPOINT_NAME = "lora-local"
DEFAULT_VARIANT = "AllTraffic"
