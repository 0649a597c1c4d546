"""The engine interface on vLLM: ``submit(rows) -> Handle``, as ``engine.Engine`` answers it, with vLLM's
``AsyncLLM`` (paged attention, continuous batching, multi-LoRA kernels) doing the generating.

Only token ids cross over: a row's prompt ids go in (tokenised by the handler, as for its own engine), and
each new token id comes back and goes through the same ``_RowState`` the handler's engine uses - the same
incremental detokenising, stop sequences, EOS handling and time budget - so both engines answer a request
with the same fields, finish reasons and errors. vLLM is told to ignore EOS and stop nothing itself; when
the row's state finishes, the request is aborted. Sampling maps one to one (greedy as temperature 0,
``seed`` per row, ``top_k`` 0 as vLLM's -1, ``repetition_penalty``); a row that wants log-probs asks for the
chosen token's.

Adapters: one stable ``LoRARequest`` per registered adapter name (its id never reused), pointing at the
folder the registry validated; vLLM keeps ``max_loras`` on the device and ``max_cpu_loras`` in host memory
and loads the others on demand. Unregistering removes it from vLLM (``remove_lora``).

vLLM's loop runs on a thread of its own; ``submit`` may be called from any thread, and a handle submitted
with ``loop`` gets its steps on that loop, as with the handler's engine. Imports vLLM lazily.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from lora_endpoint.contract.errors import (
    ContextLengthExceeded,
    GenerationFailed,
    HandlerError,
    ModelOverloaded,
    UnknownAdapter,
)

from . import generation
from .generation import Delta, Row, _RowState
from .handle import _DONE, EngineLimits, EngineStats, Handle
from .loading import LoadedModel

log = logging.getLogger("lora_endpoint.handler")


class VllmEngine:
    """The engine interface on vLLM's ``AsyncLLM`` (see the module docstring). Thread-safe ``submit``."""

    name = "vllm"

    def __init__(self, lm: LoadedModel, limits: EngineLimits, base_path: str) -> None:
        self.lm = lm
        self.limits = limits
        self.stats = EngineStats()
        self._lock = threading.Lock()
        self._running = 0
        self._rows = 0
        self._stopping = False
        self._lora_ids: dict[str, int] = {}
        self._next_id = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lora-vllm", daemon=True)
        self._thread.start()
        self._llm = asyncio.run_coroutine_threadsafe(self._start(base_path), self._loop).result()

    async def _start(self, base_path: str) -> Any:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        s = self.lm.settings
        args = AsyncEngineArgs(
            model=base_path,
            tokenizer=base_path,
            dtype=str(self.lm.dtype).removeprefix("torch."),
            max_model_len=self.lm.context_length,
            max_num_seqs=self.limits.max_rows,
            enable_lora=True,
            max_loras=s.max_loras,
            max_cpu_loras=s.host_loras,
            max_lora_rank=_vllm_rank(s.max_lora_rank),
            tensor_parallel_size=s.tensor_parallel_degree,
            trust_remote_code=s.trust_remote_code,
            enforce_eager=self.lm.device.type != "cuda",  # no CUDA graphs to capture on a CPU
            # On a CPU this is the share of the NUMA node's memory vLLM reserves for its KV cache, and it
            # refuses to start unless that much is free: 0.92 (its default) fails on any machine doing
            # something else. 30% is what this handler's own engine takes on a CPU (LORA_KV_CACHE_TOKENS).
            **({} if self.lm.device.type == "cuda" else {"gpu_memory_utilization": 0.3}),
        )
        return AsyncLLM.from_engine_args(args)

    # --- the engine interface -----------------------------------------------------------------------------
    def submit(self, rows: Sequence[Row], *, deadline: float | None = None,
               loop: asyncio.AbstractEventLoop | None = None,
               on_release: Callable[[], None] | None = None) -> Handle:
        """Queue one request's rows; ``ModelOverloaded`` past ``max_rows + max_queue`` requests at once."""
        need = max(len(r.prompt_ids) + r.params.max_new_tokens for r in rows)
        if len(rows) > self.limits.max_rows or need > self.lm.context_length:
            raise ContextLengthExceeded(
                f"the request needs {len(rows)} rows of up to {need} tokens; this endpoint holds at most "
                f"{self.limits.max_rows} rows of {self.lm.context_length} tokens (LORA_MAX_BATCH_ROWS)")
        handle = Handle(rows, deadline, loop)
        with self._lock:
            if self._stopping:
                raise ModelOverloaded("the endpoint is shutting down; retry")
            if self._running >= self.limits.max_rows + self.limits.max_queue:
                self.stats.overloaded += 1
                raise ModelOverloaded(
                    f"the endpoint is at capacity ({self.limits.max_queue} requests waiting); retry in a moment")
            self._running += 1
            self.stats.admitted += 1
            self._count_rows(len(rows))
        handle._on_release = on_release
        handle.admitted_s = time.monotonic()  # vLLM queues it from here on (its own queue is not seen)
        asyncio.run_coroutine_threadsafe(self._run(handle), self._loop)
        return handle

    def _count_rows(self, change: int) -> None:
        """Rows in flight (under ``_lock``): those past ``max_rows`` count as waiting - vLLM's scheduler
        decides which of them run, by its own KV-cache budget."""
        self._rows += change
        self.stats.running_rows = min(self._rows, self.limits.max_rows)
        self.stats.waiting = max(0, self._running - self.limits.max_rows)

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._lock:
            self._stopping = True
        try:
            self._llm.shutdown()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout_s)

    def load_adapter(self, name: str, *, pin: bool = False) -> None:
        """Load ``name`` into vLLM now (``preload``), and keep it on the device for good (``pin``)."""
        request = self._lora(name)

        async def load() -> None:
            await self._llm.add_lora(request)
            if pin:
                await self._llm.pin_lora(request.lora_int_id)

        asyncio.run_coroutine_threadsafe(load(), self._loop).result()

    def loaded_adapters(self) -> list[str]:
        """The adapters vLLM holds now (on the device or in its host cache)."""
        ids = set(asyncio.run_coroutine_threadsafe(self._llm.list_loras(), self._loop).result())
        return sorted(name for name, lora_id in self._lora_ids.items() if lora_id in ids)

    def remove_adapter(self, name: str) -> None:
        """Drop ``name`` from vLLM (the registry calls this once no request holds it)."""
        lora_id = self._lora_ids.pop(name, None)
        if lora_id is not None:
            asyncio.run_coroutine_threadsafe(self._llm.remove_lora(lora_id), self._loop).result()

    # --- on vLLM's loop -----------------------------------------------------------------------------------
    async def _run(self, handle: Handle) -> None:
        try:
            await asyncio.gather(*(self._row(handle, i, row) for i, row in enumerate(handle.rows)))
            handle._put(_DONE)
        except HandlerError as err:
            handle._put(err)
        except Exception:
            log.exception("vLLM failed to generate a request")
            handle._put(GenerationFailed())
        finally:
            with self._lock:
                self._running -= 1
                self._count_rows(-len(handle.rows))
            handle._release()

    async def _row(self, handle: Handle, index: int, row: Row) -> None:
        lm = self.lm
        tokenizer = lm.tokenizer_for(row.adapter)
        state = _RowState(row, tokenizer, generation._eos_ids(lm, tokenizer))
        request_id = uuid.uuid4().hex
        stream = self._llm.generate({"prompt_token_ids": list(row.prompt_ids)}, _sampling(row), request_id=request_id,
                                    lora_request=self._lora(row.adapter))
        try:
            async for output in stream:
                if handle.cancelled:
                    return
                completion = output.outputs[0]
                logprobs = completion.logprobs or []
                for position, token in enumerate(completion.token_ids):
                    passed = handle.deadline is not None and time.monotonic() >= handle.deadline
                    text = state.push(token, passed)
                    logprob = _chosen_logprob(logprobs, position, token) if row.logprobs else None
                    handle._put([Delta(index, text, token, logprob, state.finish)])
                    self.stats.decode_steps += 1
                    self.stats.generated_tokens += 1
                    if state.finish is not None:
                        return
            if state.finish is None:  # vLLM ended the row first (it was told to stop at max_new_tokens only)
                state.finish = generation.LENGTH
                handle._put([Delta(index, state._flush(), -1, None, state.finish)])
        finally:
            await self._llm.abort(request_id)  # a no-op for a finished request

    def _lora(self, adapter: str | None) -> Any:
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        info = self.lm.adapters.get(adapter)
        if info is None:
            raise UnknownAdapter(f"adapter {adapter!r} is not served here (it was unregistered)", param="adapters")
        lora_id = self._lora_ids.setdefault(adapter, next(self._next_id))
        return LoRARequest(adapter, lora_id, str(info.path))


def _sampling(row: Row) -> Any:
    """Our parameters as vLLM's, one to one; vLLM stops at ``max_new_tokens`` only (see the module docstring)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    p = row.params
    greedy = p.greedy
    return SamplingParams(
        max_tokens=p.max_new_tokens,
        temperature=0.0 if greedy else p.temperature,
        top_p=1.0 if greedy else p.top_p,
        top_k=-1 if greedy or p.top_k == 0 else p.top_k,
        repetition_penalty=p.repetition_penalty,
        seed=p.seed,
        ignore_eos=True,
        logprobs=0 if row.logprobs else None,
        output_kind=RequestOutputKind.DELTA,
        detokenize=False,
    )


def _chosen_logprob(logprobs: Sequence[Any], position: int, token: int) -> float | None:
    if position >= len(logprobs) or logprobs[position] is None:
        return None
    entry = logprobs[position].get(token)
    return None if entry is None else float(entry.logprob)


def _vllm_rank(rank: int) -> int:
    """vLLM accepts only some ranks as ``max_lora_rank``: the smallest of them not below ``rank``."""
    for allowed in (8, 16, 32, 64, 128, 256, 320, 512):
        if rank <= allowed:
            return allowed
    return rank
