"""Sampling parameters: how one row picks its tokens. A leaf module: the decode loop and the engine
import this, never the request kinds or the HTTP shapes (``fields.read_sampling`` reads them from a body).
"""

from __future__ import annotations

from dataclasses import dataclass

# Below this a temperature means greedy (vLLM's epsilon): dividing logits by 5e-324 overflows to inf.
SAMPLING_EPS = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one row; validated, with server caps applied."""

    max_new_tokens: int = 30
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature < SAMPLING_EPS
