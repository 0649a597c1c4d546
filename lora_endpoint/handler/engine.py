"""The engine: one thread owns the model and runs iteration-level (continuous) batching.

Requests are submitted as rows (token ids, adapter, sampling parameters) and get a ``Handle`` back;
each engine iteration
1. admits waiting requests in arrival order while the KV budget and the row limit allow (all the rows
   of a request together), so nothing waits for a running batch to finish;
2. prefills at most ``prefill_chunk_tokens`` prompt tokens (long prompts in chunks over several
   iterations, short ones several in one pass), so a long prompt stalls running streams by one chunk;
3. runs one decode step for every row that has its prompt in the cache, whatever its adapter or
   request, streaming or not; a row that finishes leaves at once and its slot is reused;
4. hands each request the deltas of its rows (``Handle.steps`` / ``Handle.asteps``).

The cache is ``kv_cache.SlotCache`` (per-row slots; see its design note); only the last position's
logits are computed (``logits_to_keep``). Admission control: at most ``max_queue`` requests wait, and
beyond that ``submit`` raises ``ModelOverloaded`` (429, ``Retry-After``); the KV budget bounds memory,
so an over-committed endpoint queues instead of running out of memory. Each request's deadline runs
from its own arrival. A row whose scores are not finite fails its own request; a forward pass that
raises is retried row by row, so the row that causes it fails alone.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

from lora_endpoint.contract.errors import ContextLengthExceeded, GenerationFailed, HandlerError, ModelOverloaded

from . import generation
from .generation import ERROR, Delta, Row, _adapter_routing, _RowState
from .handle import _DONE, EngineLimits, EngineStats, Handle
from .loading import LoadedModel

log = logging.getLogger("lora_endpoint.handler")

T = TypeVar("T")
SLOT_ALIGN = 64  # slot capacity grows in steps of this many positions


@dataclass(eq=False)
class _Seq:
    """One row inside the engine."""

    row: Row
    handle: Handle
    index: int
    state: _RowState
    generator: Any
    history: Any
    pending: list[int]  # prompt ids not yet in the cache
    slot: int = -1
    pos: int = 0  # positions written in the slot
    next_token: int = 0  # sampled, not yet in the cache
    done: bool = False

    @property
    def need(self) -> int:
        return len(self.row.prompt_ids) + self.row.params.max_new_tokens


@dataclass(eq=False)
class _Waiting:
    handle: Handle
    need: int


class Engine:
    """Continuous batching over one loaded model (see the module docstring). Thread-safe ``submit``."""

    def __init__(self, lm: LoadedModel, limits: EngineLimits) -> None:
        from .kv_cache import SlotCache

        self.lm = lm
        self.limits = limits
        self.stats = EngineStats()
        self._cache = SlotCache()
        self._inbox: deque[_Waiting] = deque()
        self._waiting: deque[_Waiting] = deque()
        self._wake = threading.Condition()
        self._decoding: list[_Seq] = []
        self._prefilling: list[_Seq] = []
        self._finished: list[_Seq] = []  # rows that left in this iteration
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stopping = False
        self._forward_kwargs = _forward_kwargs(lm.model)
        self._thread = threading.Thread(target=self._run, name="lora-engine", daemon=True)
        self._thread.start()

    # --- the submitting side (any thread) -----------------------------------------------------------
    def submit(self, rows: Sequence[Row], *, deadline: float | None = None,
               loop: asyncio.AbstractEventLoop | None = None,
               on_release: Callable[[], None] | None = None) -> Handle:
        """Queue one request's rows; raises ``ModelOverloaded`` when the queue is full. ``on_release`` is
        called (on the engine thread) once the engine holds none of the request's rows any more; not when
        ``submit`` raises."""
        handle = Handle(rows, deadline, loop)
        need = max(len(r.prompt_ids) + r.params.max_new_tokens for r in rows)
        if len(rows) > self.limits.max_rows or len(rows) * _aligned(need) > self.limits.kv_tokens:
            raise ContextLengthExceeded(
                f"the request needs {len(rows)} rows of up to {need} tokens; this endpoint holds at most "
                f"{self.limits.max_rows} rows and {self.limits.kv_tokens} KV-cache tokens at once "
                "(LORA_MAX_BATCH_ROWS, LORA_KV_CACHE_TOKENS)")
        with self._wake:
            if self._stopping:
                raise ModelOverloaded("the endpoint is shutting down; retry")
            if len(self._inbox) + len(self._waiting) >= self.limits.max_queue:
                self.stats.overloaded += 1
                raise ModelOverloaded(
                    f"the endpoint is at capacity ({self.limits.max_queue} requests waiting); retry in a moment")
            handle._on_release = on_release
            self._inbox.append(_Waiting(handle, need))
            self._wake.notify()
        return handle

    def between_steps(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` on the engine thread between two iterations (no forward pass is running, the model
        lock is held): how adapters move in and out of the model without stopping generation for longer
        than ``fn`` takes. The future carries its result or exception."""
        future: Future[T] = Future()
        with self._wake:
            if self._stopping:
                future.set_exception(ModelOverloaded("the endpoint is shutting down; retry"))
                return future
            self._tasks.append((fn, future))
            self._wake.notify()
        return future

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout_s)

    # --- the engine thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        # Inference mode for the thread's whole life: cache tensors are made and moved under it, on this
        # thread only, whichever path moves them (an iteration, a failure, shutting down).
        with _inference_mode():
            self._loop()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not (self._inbox or self._waiting or self._decoding or self._prefilling or self._stopping
                           or self._tasks):
                    self._cache.clear()  # idle: give the memory back
                    self._wake.wait()
                if self._stopping:
                    self._fail_all(ModelOverloaded("the endpoint is shutting down; retry"))
                    return
                for waiting in self._inbox:
                    waiting.handle.arrived_at = self.stats.iterations + 1  # the next iteration sees it
                self._waiting.extend(self._inbox)
                self._inbox.clear()
                tasks = list(self._tasks)
                self._tasks.clear()
                busy = bool(self._waiting or self._decoding or self._prefilling)
            try:
                # The model lock: nothing else may use the model meanwhile (the reference decode loop in tests).
                with self.lm.lock:
                    for fn, future in tasks:
                        _run_task(fn, future)
                    if busy:
                        self._iteration()
            except Exception:  # a bug here must not kill the engine: fail what is running, go on
                log.exception("engine iteration failed")
                self._fail_running(GenerationFailed())

    def _iteration(self) -> None:
        self.stats.iterations += 1
        self._drop_cancelled()
        self._admit()
        # Prefill and decode are two steps for the requests: a row that gets its first token from the
        # prefill and its second from the decode pass of the same iteration has one delta per step.
        for phase in (self._prefill, self._decode):
            if not (self._prefilling if phase == self._prefill else self._decoding):
                continue
            events: dict[Handle, list[Delta]] = {}
            phase(events)
            for handle, step in events.items():
                if handle.first_token_at is None:
                    handle.first_token_at = self.stats.iterations
                self.stats.generated_tokens += len(step)
                handle._put(step)
        for handle in {s.handle for s in self._finished}:
            if all(s.done for s in self._rows_of(handle)):
                handle._put(_DONE)
                handle._release()
        self._finished.clear()
        s = self.stats
        s.waiting, s.running_rows = len(self._waiting), len(self._decoding) + len(self._prefilling)
        s.kv_tokens_allocated = self._cache.allocated_tokens

    # --- admission ----------------------------------------------------------------------------------
    def _admit(self) -> None:
        if any(w.handle.cancelled for w in self._waiting):
            # A caller that gave up frees its place in the queue now, not when it reaches the front: it
            # must not count against max_queue (and answer others 429) behind a request that cannot start.
            for waiting in [w for w in self._waiting if w.handle.cancelled]:
                waiting.handle._release()
            self._waiting = deque(w for w in self._waiting if not w.handle.cancelled)
        while self._waiting:
            waiting = self._waiting[0]
            handle = waiting.handle
            rows = len(self._decoding) + len(self._prefilling) + len(handle.rows)
            capacity = max(self._cache.capacity, _aligned(waiting.need))
            slots = min(self.limits.max_rows, _power_of_two(rows))  # room to grow without reallocating
            if max(slots, self._cache.slots) * capacity > self.limits.kv_tokens:
                slots = rows  # exactly what is needed, when the rounded-up size does not fit
            if rows > self.limits.max_rows or max(slots, self._cache.slots) * capacity > self.limits.kv_tokens:
                return  # wait for running rows to leave (arrival order is kept: no overtaking)
            self._waiting.popleft()
            handle.admitted_s = time.monotonic()
            self._cache.reserve(slots, capacity)
            self.stats.admitted += 1
            for index, row in enumerate(handle.rows):
                self._prefilling.append(self._new_seq(row, handle, index))

    def _new_seq(self, row: Row, handle: Handle, index: int) -> _Seq:
        import torch

        lm = self.lm
        tokenizer = lm.tokenizer_for(row.adapter)
        generator = torch.Generator(device=lm.device)
        generator.manual_seed(row.params.seed if row.params.seed is not None else int(torch.randint(0, 2**62, (1,))))
        history = (torch.tensor(row.prompt_ids, dtype=torch.long, device=lm.device)
                   if row.params.repetition_penalty != 1.0 else torch.empty(0, dtype=torch.long, device=lm.device))
        state = _RowState(row, tokenizer, generation._eos_ids(lm, tokenizer))
        seq = _Seq(row, handle, index, state, generator, history, list(row.prompt_ids))
        used = {s.slot for s in self._decoding} | {s.slot for s in self._prefilling}
        seq.slot = max(set(range(self._cache.slots)) - used)  # from the top: away from the decoding rows
        return seq

    def _rows_of(self, handle: Handle) -> list[_Seq]:
        return [s for s in (*self._decoding, *self._prefilling, *self._finished) if s.handle is handle]

    # --- prefill --------------------------------------------------------------------------------------
    def _prefill(self, events: dict[Handle, list[Delta]]) -> None:
        import torch

        budget = self.limits.prefill_tokens
        chunk: list[tuple[_Seq, int]] = []
        for seq in self._prefilling:
            if budget <= 0:
                break
            take = min(len(seq.pending), budget)
            chunk.append((seq, take))
            budget -= take
        width = max(take for _, take in chunk)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, (seq, take) in enumerate(chunk):
            ids[i, width - take :] = torch.tensor(seq.pending[:take])
        seqs = [seq for seq, _ in chunk]

        def plan(rows: list[tuple[_Seq, int]]) -> None:
            self._cache.plan_prefill([s.slot for s, _ in rows], [s.pos for s, _ in rows], [t for _, t in rows])

        logits = self._guarded(chunk, plan, ids)
        self.stats.prefill_passes += 1
        for seq, take in chunk:
            if seq.done:
                continue
            seq.pos += take
            del seq.pending[:take]
        ready = [i for i, seq in enumerate(seqs) if not seq.done and not seq.pending]
        if ready:
            self._sample([seqs[i] for i in ready], logits[ready], events)
        for i in ready:
            if not seqs[i].done:
                self._to_decoding(seqs[i])

    # --- decode ---------------------------------------------------------------------------------------
    def _decode(self, events: dict[Handle, list[Delta]]) -> None:
        import torch

        seqs = list(self._decoding)
        ids = torch.tensor([[s.next_token] for s in seqs], dtype=torch.long)

        def plan(rows: list[tuple[_Seq, int]]) -> None:
            if len(rows) == len(seqs):
                self._cache.plan_decode([s.pos for s in seqs])
            else:  # a retry of one row: by slot, not as the whole decoding batch
                self._cache.plan_prefill([s.slot for s, _ in rows], [s.pos for s, _ in rows], [1] * len(rows))

        logits = self._guarded([(s, 1) for s in seqs], plan, ids)
        self.stats.decode_steps += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(seqs))
        self.stats.batch_sizes[len(seqs)] = self.stats.batch_sizes.get(len(seqs), 0) + 1
        for seq in seqs:
            if not seq.done:
                seq.pos += 1
        live = [i for i, s in enumerate(seqs) if not s.done]
        self._sample([seqs[i] for i in live], logits[live], events)

    def _guarded(self, rows: list[tuple[_Seq, int]], plan: Any, ids: Any) -> Any:
        """The forward pass for ``rows``; if it raises, each row again alone: a row that still fails
        fails its request, the others get their logits."""
        try:
            plan(rows)
            return self._forward(ids, [s.row.adapter for s, _ in rows])
        except Exception:
            if len(rows) == 1:
                log.exception("forward pass failed for one row")
                self._fail_request(rows[0][0].handle, GenerationFailed())
                return _nan_rows(1, self.lm)
            log.exception("forward pass of %d rows failed; running each row alone", len(rows))
        parts = []
        for i, row in enumerate(rows):
            if row[0].done:
                parts.append(_nan_rows(1, self.lm))
                continue
            self._cache.plan_prefill([row[0].slot], [row[0].pos], [row[1]])
            try:
                parts.append(self._forward(ids[i : i + 1, -row[1] :], [row[0].row.adapter]))
            except Exception:
                log.exception("forward pass failed for one row")
                self._fail_request(row[0].handle, GenerationFailed())
                parts.append(_nan_rows(1, self.lm))
        import torch

        return torch.cat(parts)

    def _forward(self, ids: Any, adapters: list[str | None]) -> Any:
        """Last-position logits (float32) of one pass over the planned rows."""

        lm = self.lm
        cache = self._cache
        with _adapter_routing(lm, adapters) as routing:
            out = lm.model(
                input_ids=ids.to(lm.device),
                attention_mask=cache.attention_mask(lm.dtype, lm.device),
                position_ids=cache.position_ids(lm.device),
                use_cache=True,
                **{self._forward_kwargs["cache"]: cache},
                **self._forward_kwargs["logits"],
                **routing,
            )
            return out.logits[:, -1, :].float()

    # --- sampling and leaving -----------------------------------------------------------------------
    def _sample(self, seqs: list[_Seq], logits: Any, events: dict[Handle, list[Delta]]) -> None:
        import torch

        if not seqs:
            return
        tokens, failed = generation._pick_tokens(logits, [s.row for s in seqs], [s.history for s in seqs],
                                      [s.generator for s in seqs])
        want = [i for i, s in enumerate(seqs) if s.row.logprobs]
        logprobs = torch.log_softmax(logits[want], dim=-1).gather(1, tokens[want][:, None])[:, 0] if want else None
        by_row = dict(zip(want, logprobs.tolist() if logprobs is not None else [], strict=True))
        now = time.monotonic()
        for i, (seq, token) in enumerate(zip(seqs, tokens.tolist(), strict=True)):
            if seq.done:
                continue
            if i in failed:
                seq.state.finish = ERROR
                events.setdefault(seq.handle, []).append(Delta(seq.index, "", token, None, ERROR))
                self._fail_request(seq.handle, None)
                continue
            passed = seq.handle.deadline is not None and now >= seq.handle.deadline
            text = seq.state.push(token, passed)
            events.setdefault(seq.handle, []).append(Delta(seq.index, text, token, by_row.get(i), seq.state.finish))
            seq.next_token = token
            if seq.row.params.repetition_penalty != 1.0:
                seq.history = torch.cat([seq.history, tokens[i : i + 1].to(seq.history.device)])
            if seq.state.finish is not None:
                self._leave(seq)

    def _to_decoding(self, seq: _Seq) -> None:
        """A row whose prompt is in the cache joins the decoding rows: its slot moves to the end of them."""
        target = len(self._decoding)
        if seq.slot != target:
            other = next((s for s in self._prefilling if s.slot == target), None)
            if other is not None:
                self._cache.swap(seq.slot, target, seq.pos, other.pos)
                other.slot = seq.slot
            else:
                self._cache.move(seq.slot, target, seq.pos)
            seq.slot = target
        self._prefilling.remove(seq)
        self._decoding.append(seq)

    def _leave(self, seq: _Seq) -> None:
        """A finished (or dropped) row frees its slot; the last decoding row moves into it."""
        seq.done = True
        self._finished.append(seq)
        if seq in self._prefilling:
            self._prefilling.remove(seq)
            return
        if seq not in self._decoding:
            return
        last = self._decoding[-1]
        if last is not seq:
            self._cache.move(last.slot, seq.slot, last.pos)
            self._decoding[seq.slot] = last
            last.slot = seq.slot
        self._decoding.pop()

    def _fail_request(self, handle: Handle, err: HandlerError | None) -> None:
        """Every row of ``handle`` leaves; the caller gets ``err`` (or the ERROR delta already sent)."""
        for seq in [s for s in (*self._decoding, *self._prefilling) if s.handle is handle]:
            self._leave(seq)
        if err is not None:
            handle._put(err)
        handle._release()

    def _drop_cancelled(self) -> None:
        for seq in [s for s in (*self._decoding, *self._prefilling) if s.handle.cancelled]:
            self._leave(seq)

    def _fail_running(self, err: HandlerError) -> None:
        for handle in {s.handle for s in (*self._decoding, *self._prefilling)}:
            self._fail_request(handle, err)
        self._finished.clear()

    def _fail_all(self, err: HandlerError) -> None:
        self._fail_running(err)
        for waiting in (*self._waiting, *self._inbox):
            waiting.handle._put(err)
            waiting.handle._release()
        self._waiting.clear()
        self._inbox.clear()
        for _, future in self._tasks:
            future.set_exception(err)
        self._tasks.clear()


def _run_task(fn: Callable[[], Any], future: Future[Any]) -> None:
    try:
        future.set_result(fn())
    except BaseException as err:  # the caller of between_steps gets it
        future.set_exception(err)


def _inference_mode() -> Any:
    import torch

    return torch.inference_mode()


def _nan_rows(count: int, lm: LoadedModel) -> Any:
    import torch

    vocab = lm.model.get_output_embeddings().weight.shape[0]
    return torch.full((count, vocab), float("nan"))


def _aligned(tokens: int) -> int:
    return -(-tokens // SLOT_ALIGN) * SLOT_ALIGN


def _power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _forward_kwargs(model: Any) -> dict[str, Any]:
    """How this transformers version spells the cache argument and "logits for the last position only"."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(inner.forward).parameters
    logits: dict[str, int] = {}
    if "logits_to_keep" in params:
        logits = {"logits_to_keep": 1}
    elif "num_logits_to_keep" in params:  # transformers 4.45 - 4.49
        logits = {"num_logits_to_keep": 1}
    return {"cache": "cache" if "cache" in params else "past_key_values", "logits": logits}


def kv_budget(lm: LoadedModel, requested: int, max_rows: int) -> int:
    """KV-cache tokens the engine may hold: ``requested``, or (0) what fits in memory, capped at
    ``max_rows`` rows of the full context: 80% of the free GPU memory, or 30% of the available RAM."""
    if requested > 0:
        return requested
    import torch

    config = getattr(lm.model, "config", None)
    layers = int(getattr(config, "num_hidden_layers", None) or 32)
    attention_heads = int(getattr(config, "num_attention_heads", None) or 32)
    heads = int(getattr(config, "num_key_value_heads", None) or attention_heads)
    hidden = int(getattr(config, "hidden_size", None) or 4096)
    head_dim = int(getattr(config, "head_dim", None) or hidden // attention_heads)
    per_token = 2 * layers * heads * head_dim * torch.tensor([], dtype=lm.dtype).element_size()
    gpu = lm.device.type == "cuda"
    free = int(torch.cuda.mem_get_info(lm.device)[0] * 0.8) if gpu else int(_available_ram() * 0.3)
    return max(lm.context_length, min(max_rows * lm.context_length, free // max(1, per_token)))


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2


def engine_for(lm: LoadedModel) -> Engine:
    """The model's engine, started on first use (one per loaded model)."""
    with _STARTING:
        if lm.engine is None and lm.engine_kind == "vllm":
            from .vllm_engine import VllmEngine

            s = lm.settings
            lm.engine = VllmEngine(lm, EngineLimits(max_rows=s.max_batch_rows, kv_tokens=0,
                                                    prefill_tokens=s.prefill_chunk_tokens, max_queue=s.max_queue),
                                   lm.base_path)
            log.info("engine started: vLLM (%s)", lm.engine_reason)
        if lm.engine is None:
            window = sliding_window(lm.model)
            if window is not None and window < lm.context_length:
                # The engine's 4D mask is full attention: within the window that is exact.
                log.warning("the model uses sliding-window attention (%d tokens): serving a context of %d "
                            "instead of %d", window, window, lm.context_length)
                lm.context_length = window
            s = lm.settings
            lm.engine = Engine(lm, EngineLimits(
                max_rows=s.max_batch_rows,
                kv_tokens=kv_budget(lm, s.kv_cache_tokens, s.max_batch_rows),
                prefill_tokens=s.prefill_chunk_tokens,
                max_queue=s.max_queue,
            ))
            log.info("engine started: %s", lm.engine.limits)
        return lm.engine


_STARTING = threading.Lock()


def sliding_window(model: Any) -> int | None:
    """The model's attention window, if any of its layers uses one (Mistral v0.1, Gemma 2/3, ...)."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if not isinstance(window, int) or window <= 0:
        return None
    if getattr(config, "use_sliding_window", True) is False:  # Qwen2 carries a window it does not use
        return None
    return window
