"""Token generation per row: rows, their deltas and results, text bookkeeping (incremental
detokenisation, stop sequences), sampling, and routing rows to adapters - what ``engine`` runs each
step. Each row is routed to its own adapter in the same forward pass (``lora_batch``; peft's
``adapter_names`` where it cannot), so no request touches shared adapter state.

``decode`` / ``generate`` are a plain decode loop over one fixed, left-padded batch: the reference the
engine's tokens are tested against (a row must get the same tokens in the engine as alone here).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import lora_batch
from .loading import BASE_ADAPTER_NAME, LoadedModel
from .sampling import SamplingParams

log = logging.getLogger("lora_endpoint.handler")

# finish_reason values, LMI's spelling; "time_limit" is ours (see docs/handler.md). "error": the row could not
# go on (e.g. the model gave non-finite scores); only its own request fails.
LENGTH, EOS, STOP, TIME_LIMIT, ERROR = "length", "eos_token", "stop_sequence", "time_limit", "error"


@dataclass(frozen=True)
class Row:
    """One sequence to generate."""

    prompt_ids: tuple[int, ...]
    adapter: str | None
    params: SamplingParams
    logprobs: bool = False


@dataclass(frozen=True)
class Delta:
    """What one step added to one row: new text (possibly empty while a stop may be forming)."""

    row: int
    text: str
    token_id: int
    logprob: float | None
    finish_reason: str | None = None


@dataclass
class RowResult:
    """A finished row."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = LENGTH
    prompt_tokens: int = 0


class _RowState:
    """Per-row text bookkeeping: incremental detokenisation and stop-sequence matching."""

    def __init__(self, row: Row, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.row = row
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.text = ""  # text of the generated ids, final once the row ends
        self.emitted = 0  # characters of self.text already handed out
        self.finish: str | None = None
        self.max_stop = max((len(s) for s in row.params.stop), default=0)
        # Incremental detokenisation: decode only the ids from prefix_offset on (a little left context,
        # so word-start spaces come out right) instead of the whole output at every step.
        self.prefix_offset = 0
        self.read_offset = 0

    def _detokenize(self, final: bool = False) -> None:
        decode = self.tokenizer.decode
        before = decode(self.ids[self.prefix_offset : self.read_offset], skip_special_tokens=True)
        after = decode(self.ids[self.prefix_offset :], skip_special_tokens=True)
        # A trailing U+FFFD is half a multi-byte character: wait for the rest before adding it.
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.text += after[len(before) :]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def push(self, token_id: int, deadline_passed: bool) -> str:
        """Add a token; return the text that is now safe to emit."""
        if token_id in self.eos_ids and not self.row.params.ignore_eos:
            self.finish = EOS
            return self._flush()
        self.ids.append(token_id)
        self._detokenize()
        text = self.text
        if self.max_stop:
            window_start = max(0, self.emitted - self.max_stop)
            hits = [(text.find(stop, window_start), stop) for stop in self.row.params.stop]
            hits = [(pos, stop) for pos, stop in hits if pos >= 0]
            if hits:
                self.text = text[: min(pos for pos, _ in hits)]
                self.finish = STOP
                return self._flush()
        if len(self.ids) >= self.row.params.max_new_tokens:
            self.finish = LENGTH
            return self._flush()
        if deadline_passed:
            self.finish = TIME_LIMIT
            return self._flush()
        safe = len(text) - self._held_back(text)
        out = text[self.emitted : safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return out

    def _held_back(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that could still grow into a stop sequence."""
        longest = 0
        for stop in self.row.params.stop:
            for size in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:size]):
                    longest = max(longest, size)
                    break
        return longest

    def _flush(self) -> str:
        if self.finish != STOP and self.read_offset < len(self.ids):
            self._detokenize(final=True)  # the row ends: hand out bytes still waiting for a character
        out = self.text[self.emitted :]
        self.emitted = len(self.text)
        return out


def _eos_ids(lm: LoadedModel, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    config_eos = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for value in (config_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(v for v in value if isinstance(v, int))
    return frozenset(ids)


def _sample(scores: Any, p: SamplingParams, generator: Any) -> int:
    """One sampled token from one row's scores, or ``RowFailed`` when they are not usable."""
    import torch

    scores = scores / p.temperature
    if 0 < p.top_k < scores.shape[-1]:
        kth = torch.topk(scores, p.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        drop = (probs.cumsum(-1) - probs) >= p.top_p
        drop[0] = False  # the most likely token always stays (a tiny top_p rounds to 0 in float32)
        scores = scores.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise RowFailed("the model's scores are not finite")
    return int(torch.multinomial(probs, 1, generator=generator)[0])


class RowFailed(Exception):
    """One row cannot go on; the others in its batch are not affected."""


def _pick_tokens(
    logits: Any, rows: Sequence[Row], histories: Sequence[Any], generators: Sequence[Any]
) -> tuple[Any, set[int]]:
    """Choose the next token of every row with that row's own sampling parameters.

    Returns the tokens and the slots of rows that failed (their token is meaningless).
    """
    import torch

    # Plain greedy rows (the common case) take one argmax for the whole batch; the rest go row by row.
    chosen = torch.argmax(logits, dim=-1)
    # A NaN score (a broken adapter, an overflow) fails its row only; the check is one op per step.
    failed = set(torch.isnan(logits).any(dim=-1).nonzero()[:, 0].tolist())
    for i, row in enumerate(rows):
        p = row.params
        if i in failed or (p.greedy and (p.repetition_penalty == 1.0 or not histories[i].numel())):
            continue
        scores = logits[i]
        if p.repetition_penalty != 1.0 and histories[i].numel():
            seen = histories[i]
            picked = scores.gather(0, seen)
            picked = torch.where(picked < 0, picked * p.repetition_penalty, picked / p.repetition_penalty)
            scores = scores.scatter(0, seen, picked)
        try:
            chosen[i] = torch.argmax(scores) if p.greedy else _sample(scores, p, generators[i])
        except (RowFailed, RuntimeError) as err:
            log.error("row %d: sampling failed (%s); its request gets an error, its batch goes on", i, err)
            failed.add(i)
    return chosen, failed


def decode(
    lm: LoadedModel, rows: Sequence[Row], *, deadline: float | None = None
) -> Generator[list[Delta], None, None]:
    """Generate all ``rows`` together, yielding each step's deltas (a finished row's last delta has
    its ``finish_reason``). Rows are independent: a row's tokens do not depend on its neighbours."""
    import torch

    if not rows:
        return
    device = lm.device
    tokenizers = [lm.tokenizer_for(r.adapter) for r in rows]
    states = [_RowState(r, tok, _eos_ids(lm, tok)) for r, tok in zip(rows, tokenizers, strict=True)]
    generators = []
    for row in rows:
        gen = torch.Generator(device=device)
        gen.manual_seed(row.params.seed if row.params.seed is not None else int(torch.randint(0, 2**62, (1,))))
        generators.append(gen)

    width = max(len(r.prompt_ids) for r in rows)
    pad = lm.tokenizer.pad_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):  # left padding: every row's last prompt token is in the last column
        input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        mask[i, width - len(row.prompt_ids) :] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    histories = [torch.tensor(r.prompt_ids, dtype=torch.long, device=device) for r in rows]

    active = list(range(len(rows)))  # original indices of the rows still in the batch
    cache = _new_cache(lm)
    want_logprobs = any(r.logprobs for r in rows)
    keep: list[int] | None = None  # slots of the previous step that go on (None before the first step)
    tokens: Any = None
    while active:
        # Inference mode is thread-local and this is a generator that a stream may resume on another thread:
        # enter it for each step, never across a yield.
        with torch.inference_mode():
            if keep is not None:
                if len(keep) < len(active):
                    index_tensor = torch.tensor(keep, device=device)
                    cache.batch_select_indices(index_tensor)
                    tokens, mask, positions = tokens[index_tensor], mask[index_tensor], positions[index_tensor]
                    active = [active[s] for s in keep]
                input_ids = tokens[:, None]
                mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=device)], dim=1)
                positions = positions[:, -1:] + 1
            with _adapter_routing(lm, [rows[i].adapter for i in active]) as kwargs:
                out = lm.model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    **kwargs,
                )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            batch_rows = [rows[i] for i in active]
            tokens, failed = _pick_tokens(
                logits, batch_rows, [histories[i] for i in active], [generators[i] for i in active]
            )
            logprob_rows = torch.log_softmax(logits, dim=-1).gather(1, tokens[:, None])[:, 0] if want_logprobs else None
            passed = deadline is not None and time.monotonic() >= deadline
            step: list[Delta] = []
            keep = []
            token_list = tokens.tolist()
            for slot, index in enumerate(active):
                state = states[index]
                token = token_list[slot]
                if slot in failed:
                    state.finish = ERROR
                    step.append(Delta(index, "", token, None, ERROR))
                    continue
                text = state.push(token, passed)
                logprob = float(logprob_rows[slot]) if logprob_rows is not None and rows[index].logprobs else None
                step.append(Delta(index, text, token, logprob, state.finish))
                if state.finish is None:
                    keep.append(slot)
                    if rows[index].params.repetition_penalty != 1.0:
                        histories[index] = torch.cat([histories[index], tokens[slot : slot + 1]])
        yield step
        if not keep:
            break


@contextlib.contextmanager
def _adapter_routing(lm: LoadedModel, adapters: list[str | None]) -> Iterator[dict[str, Any]]:
    """Route rows to adapters: through the batched LoRA path (one delta per layer for all rows, whatever
    their adapters; base rows skip it), else peft's (``adapter_names`` for mixed rows, its plain path for a
    uniform batch). The batched path is also faster than peft's for uniform batches (scripts/bench_lora.py:
    peft's disable_adapter() and per-layer checks cost more than the delta). Callers hold ``lm.lock`` (the
    engine thread for each iteration), so switching the active adapter cannot leak into another pass."""
    if not lm.uses_peft:
        yield {}
        return
    if not lm.resident:  # every adapter was evicted (peft keeps the last one loaded: keep it out)
        with lm.model.disable_adapter():
            yield {}
        return
    batched = lora_batch.for_model(lm.model, lm.resident)
    if batched.supported:
        with batched.routing(adapters):
            yield {}
    elif len(set(adapters)) > 1:
        yield {"adapter_names": [name or BASE_ADAPTER_NAME for name in adapters]}
    elif adapters[0] is None:
        with lm.model.disable_adapter():
            yield {}
    else:
        lm.model.set_adapter(adapters[0])
        yield {}


def _new_cache(lm: LoadedModel) -> Any:
    from transformers import DynamicCache

    try:
        return DynamicCache(config=lm.model.config)
    except TypeError:  # transformers < 4.56 takes no config
        return DynamicCache()


def generate(lm: LoadedModel, rows: Sequence[Row], *, deadline: float | None = None) -> list[RowResult]:
    """Run ``decode`` to the end and collect each row's result: the reference the engine's tokens are
    tested against (the endpoint itself generates through ``engine``)."""
    with lm.lock:  # the engine thread takes it for each iteration
        steps = list(decode(lm, rows, deadline=deadline))
    return collect(rows, steps)


def collect(rows: Sequence[Row], steps: Iterable[list[Delta]]) -> list[RowResult]:
    """Each row's result from a request's steps (the reference loop's or the engine's)."""
    results = [RowResult(prompt_tokens=len(r.prompt_ids)) for r in rows]
    for step in steps:
        for delta in step:
            result = results[delta.row]
            result.text += delta.text
            result.token_ids.append(delta.token_id)
            if delta.logprob is not None:
                result.logprobs.append(delta.logprob)
            if delta.finish_reason:
                result.finish_reason = delta.finish_reason
    return results
