"""Info: ``{"task": "info"}`` describes the model to callers - names, ranks and limits, nothing about the
host (paths, memory, library versions: operators find those in the start-up log)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lora_endpoint.contract.errors import HandlerError, InvalidRequest, shown
from lora_endpoint.contract.settings import HandlerSettings

from .fields import reject_unknown
from .loading import LoadedModel


@dataclass(frozen=True)
class InfoRequest:
    kind: str = "info"
    stream: bool = False

    def with_default_adapter(self, name: str | None) -> InfoRequest:
        return self


def parse(body: Mapping[str, Any], settings: HandlerSettings) -> InfoRequest:
    reject_unknown(body, frozenset({"task"}), "an info request")
    if body.get("task") != "info":
        raise InvalidRequest(f"task must be 'info', got {shown(body.get('task'))}", param="task")
    return InfoRequest()


def render(lm: LoadedModel) -> dict[str, Any]:
    """The base model's name and context, the adapters (and those that failed to load), the limits."""
    s = lm.settings
    return {
        "base_model": lm.base_name,
        "context_length": lm.context_length,
        "merged_adapter": lm.merged_adapter,
        "default_adapter": s.default_adapter or None,
        "adapters": [_adapter(a, lm) for a in lm.adapters.values()],
        "failed_adapters": [{"name": name, "reason": reason} for name, reason in lm.failed_adapters.items()],
        "limits": {"max_new_tokens": s.max_new_tokens, "default_max_new_tokens": s.default_max_new_tokens,
                   "max_inputs": s.max_inputs, "max_payload_bytes": s.max_payload_bytes,
                   "max_batch_rows": s.max_batch_rows, "time_budget_s": s.time_budget_s,
                   "max_loras": s.max_loras, "max_cpu_loras": s.host_loras, "max_lora_rank": s.max_lora_rank},
        "just_in_time_adapters": bool(s.adapter_jit_prefix) and lm.registry is not None,
        "engine": {"name": lm.engine_kind, "reason": lm.engine_reason},
    }


def _adapter(adapter: Any, lm: LoadedModel) -> dict[str, Any]:
    """Name, rank, alpha, targets; where it lives and how it came (run-time registry) - never its src."""
    described = {"name": adapter.name, "rank": adapter.max_rank, "alpha": adapter.alpha,
                 "target_modules": list(adapter.target_modules)}
    if lm.registry is not None:
        try:
            extra = lm.registry.describe(adapter.name)
        except HandlerError:  # unregistered since the listing was taken
            return described
        described.update({k: extra[k] for k in ("alias", "origin", "pinned", "resident")})
    return described
