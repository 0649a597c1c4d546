"""lora-endpoint: from a folder of LoRA adapters to a SageMaker endpoint behind API Gateway.

One installed namespace; each subpackage is one component, in dependency order (a test walks the imports):

```
contract/    what the components agree on: request schemas and statuses, errors, settings, metric catalog
             (stdlib only; read by the handler, the packager, the local endpoint and the CDK app)
handler/     runs inside the model container (DJL handle(), SageMaker model_fn...); imports only contract/
packaging/   builds, validates and uploads model.tar.gz; ships contract/ and handler/ inside it
local/       the local endpoint: a package served on localhost the way DJL and SageMaker serve it
clients/     what talks to an endpoint, local or deployed: invoke, smoke, load, adapter operations
training/    LoRA fine-tuning with transformers + peft
commands/    the ``lora-endpoint`` subcommands, thin: parse flags, call the packages above
cli.py       ``lora-endpoint``: one entry point for every command
```

The CDK app (``cdk/``) runs from a source checkout and is not installed; it reads ``contract`` and the
packager's manifest reader, never the handler or the local endpoint.

This file is shipped in every model artifact: it imports nothing.
"""

__version__ = "0.1.0"
