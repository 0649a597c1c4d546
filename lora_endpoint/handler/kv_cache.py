"""A KV cache of per-row slots, so rows can join and leave a running batch without re-padding it.

Design. Each layer keeps one preallocated key tensor and one value tensor of shape
``[slots, kv_heads, capacity, head_dim]``. A row owns one slot for its whole life and writes its keys at
its own positions (0, 1, 2, ... in that slot), so rows of different lengths never pad each other. The
engine keeps its decoding rows in slots ``0..d-1`` in batch order: a decode step's keys are the view
``k[:d, :, :L]`` (no copy), with a 4D mask that hides each row's unused tail. A row that finishes leaves
by moving the last decoding row into its slot (one row's keys copied once, not the batch every step);
a row being prefilled lives in a free slot above ``d`` and moves down to ``d`` when its prompt is done.
Prefill writes only the real (not the padding) positions of each row. The tensors grow (reallocate and
copy) when more slots or a longer capacity are reserved, and are dropped when the engine is idle.

Compared with a paged (block) cache this wastes the tail of short rows' slots, bounded by the admission
budget (slots x capacity); in return any Hugging Face causal LM works unchanged: the model sees an
ordinary ``Cache`` whose ``update`` returns the keys and values to attend to.

Subclassing ``DynamicCache`` is only for the models' ``isinstance(..., Cache)`` checks; none of its
storage is used. ``update`` is the one method the attention layers call (transformers 4.45+ and 5.x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache


@dataclass(frozen=True)
class _Plan:
    """What the next forward pass writes and attends to."""

    slots: tuple[int, ...]  # the batch's rows, by slot
    starts: tuple[int, ...]  # where each row's new tokens go in its slot
    lengths: tuple[int, ...]  # how many of the step's (left-padded) positions are real, per row
    width: int  # query positions in the step (q)
    span: int  # key positions attended (max start + length)


class SlotCache(DynamicCache):
    """Per-row KV slots; the engine plans each forward with ``plan_decode`` / ``plan_prefill``."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.slots = 0
        self.capacity = 0
        self._plan: _Plan | None = None

    # --- sizing -------------------------------------------------------------------------------------
    def reserve(self, slots: int, capacity: int) -> None:
        """Room for at least ``slots`` rows of ``capacity`` positions each (existing rows are kept)."""
        slots, capacity = max(slots, self.slots), max(capacity, self.capacity)
        if (slots, capacity) == (self.slots, self.capacity):
            return
        for layer, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            self.keys[layer] = _grown(k, slots, capacity)
            self.values[layer] = _grown(v, slots, capacity)
        self.slots, self.capacity = slots, capacity

    def clear(self) -> None:
        """Free the memory (the engine is idle); the next forward allocates again."""
        self.keys, self.values = [], []
        self.slots = self.capacity = 0

    @property
    def allocated_tokens(self) -> int:
        return self.slots * self.capacity

    # --- planning a forward pass --------------------------------------------------------------------
    def plan_decode(self, starts: Sequence[int]) -> None:
        """One new token for each decoding row, rows in slots ``0..len(starts)-1``."""
        n = len(starts)
        self._plan = _Plan(tuple(range(n)), tuple(starts), (1,) * n, 1, max(starts) + 1)

    def plan_prefill(self, slots: Sequence[int], starts: Sequence[int], lengths: Sequence[int]) -> None:
        """Prompt chunks, left-padded to the longest: row i writes ``lengths[i]`` tokens at ``starts[i]``."""
        width = max(lengths)
        span = max(s + n for s, n in zip(starts, lengths, strict=True))
        self._plan = _Plan(tuple(slots), tuple(starts), tuple(lengths), width, span)

    def attention_mask(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The additive 4D mask ``[rows, 1, q, span]`` of the planned pass: query j of row i (real or
        padding) sees the keys up to its own position; padding queries see position 0 only."""
        plan = self._plan
        assert plan is not None
        q = torch.arange(plan.width, device=device)
        starts = torch.tensor(plan.starts, device=device)[:, None]
        pads = plan.width - torch.tensor(plan.lengths, device=device)[:, None]
        position = starts + q[None, :] - pads  # [rows, q]; negative for padding
        keys = torch.arange(plan.span, device=device)
        visible = keys[None, None, :] <= position.clamp(min=0)[:, :, None]
        mask = torch.zeros(visible.shape, dtype=dtype, device=device)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return mask[:, None, :, :]

    def position_ids(self, device: torch.device) -> torch.Tensor:
        """RoPE positions of the planned pass, ``[rows, q]`` (padding at position 0)."""
        plan = self._plan
        assert plan is not None
        q = torch.arange(plan.width, device=device)[None, :]
        starts = torch.tensor(plan.starts, device=device)[:, None]
        pads = plan.width - torch.tensor(plan.lengths, device=device)[:, None]
        return (starts + q - pads).clamp(min=0)

    # --- what the attention layers call -------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        plan = self._plan
        assert plan is not None, "SlotCache.update without a plan"
        if layer_idx == len(self.keys):  # first pass through this layer: allocate its slots
            shape = (self.slots, key_states.shape[1], self.capacity, key_states.shape[3])
            self.keys.append(key_states.new_zeros(shape))
            self.values.append(value_states.new_zeros(shape))
        k, v = self.keys[layer_idx], self.values[layer_idx]
        if plan.width == 1:
            rows = torch.tensor(plan.slots, device=k.device)
            at = torch.tensor(plan.starts, device=k.device)
            k[rows, :, at] = key_states[:, :, 0]
            v[rows, :, at] = value_states[:, :, 0]
        else:
            for i, (slot, start, length) in enumerate(zip(plan.slots, plan.starts, plan.lengths, strict=True)):
                k[slot, :, start : start + length] = key_states[i, :, plan.width - length :]
                v[slot, :, start : start + length] = value_states[i, :, plan.width - length :]
        if plan.slots == tuple(range(len(plan.slots))):  # decoding rows: a view, no copy
            n = len(plan.slots)
            return k[:n, :, : plan.span], v[:n, :, : plan.span]
        index = torch.tensor(plan.slots, device=k.device)
        return k[:, :, : plan.span].index_select(0, index), v[:, :, : plan.span].index_select(0, index)

    def get_seq_length(self, layer_idx: int | None = 0, *args: Any, **kwargs: Any) -> int:
        return 0  # positions are always passed explicitly; no model code needs a shared length

    # --- moving rows between slots ------------------------------------------------------------------
    def move(self, source: int, target: int, length: int) -> None:
        """Copy a row's first ``length`` positions from slot ``source`` to slot ``target``."""
        for k, v in zip(self.keys, self.values, strict=True):
            k[target, :, :length] = k[source, :, :length]
            v[target, :, :length] = v[source, :, :length]

    def swap(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """Exchange two rows' slots."""
        for k, v in zip(self.keys, self.values, strict=True):
            for t in (k, v):
                saved = t[a, :, :length_a].clone()
                t[a, :, :length_b] = t[b, :, :length_b]
                t[b, :, :length_a] = saved


def _grown(tensor: torch.Tensor, slots: int, capacity: int) -> torch.Tensor:
    bigger = tensor.new_zeros((slots, tensor.shape[1], capacity, tensor.shape[3]))
    bigger[: tensor.shape[0], :, : tensor.shape[2]] = tensor
    return bigger
