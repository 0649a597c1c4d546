"""What the components agree on, in one place: stdlib only, so the handler (inside the container), the
packager, the local endpoint and the CDK app all read it without importing one another.

```
api.py       request schemas (JSON Schema, also the API Gateway models), the status table, error bodies
errors.py    the error hierarchy: each error's HTTP status and machine-readable type
settings.py  HandlerSettings and the LORA_* environment names the deployment may set
metrics.py   the metric catalog (names, units, Prometheus names) and the bounded Adapter label
```
"""
