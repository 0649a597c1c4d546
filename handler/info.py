"""Info: ``{"task": "info"}`` describes the model to callers - names, ranks and limits, nothing about the
host (paths, memory, library versions: operators find those in the start-up log)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import HandlerSettings
from .errors import InvalidRequest, shown
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
        "adapters": [
            {"name": a.name, "rank": a.max_rank, "alpha": a.alpha, "target_modules": list(a.target_modules)}
            for a in lm.adapters.values()
        ],
        "failed_adapters": [{"name": name, "reason": reason} for name, reason in lm.failed_adapters.items()],
        "limits": {"max_new_tokens": s.max_new_tokens, "default_max_new_tokens": s.default_max_new_tokens,
                   "max_inputs": s.max_inputs, "max_payload_bytes": s.max_payload_bytes,
                   "max_batch_rows": s.max_batch_rows, "time_budget_s": s.time_budget_s},
    }
