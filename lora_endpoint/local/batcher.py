"""Sync mode (``option.async_mode=false``): an in-process dynamic batcher with DJL Serving's settings,
``batch_size`` and ``max_batch_delay``.

Requests wait in a queue; the worker takes the oldest, then gathers more until the batch holds
``batch_size`` requests or ``max_batch_delay`` ms have passed since the oldest arrived, builds ONE DJL
batch Input and calls ``handle()`` once on the worker thread (one thread, like DJL's one Python
worker), then hands each caller its part of the Output. Streaming requests do not batch: they call
``handle()`` on the same worker thread through ``call_direct``, and their tokens are generated under
the handler's model lock, so a stream never runs at the same time as a batch.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .djl_io import Answer, Call, build_input, failure_answer, split_output

log = logging.getLogger("lora_endpoint.local")


@dataclass
class _Pending:
    call: Call
    future: asyncio.Future[Answer]
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """How many handle() calls carried how many requests (what the tests and benchmarks read)."""

    sizes: Counter[int] = field(default_factory=Counter)

    @property
    def batches(self) -> int:
        return sum(self.sizes.values())

    @property
    def largest(self) -> int:
        return max(self.sizes, default=0)

    def as_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "largest": self.largest,
                "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}


class Batcher:
    """Collects requests into DJL batches; ``start`` it inside the event loop, ``drain`` it at shutdown."""

    def __init__(self, handle: Callable[[Any], Any], djl: ModuleType, *, batch_size: int,
                 max_batch_delay_ms: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if max_batch_delay_ms < 0:
            raise ValueError(f"max_batch_delay must be 0 or more ms, got {max_batch_delay_ms}")
        self.handle = handle
        self.djl = djl
        self.batch_size = batch_size
        self.max_delay = max_batch_delay_ms / 1000.0
        self.stats = BatchStats()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="djl-worker")
        self._queue: asyncio.Queue[_Pending | None] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="batcher")

    async def drain(self, timeout_s: float = 60.0) -> None:
        """Answer everything queued, then stop the worker (bounded by ``timeout_s``)."""
        if self._queue is not None and self._task is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
            except TimeoutError:
                log.warning("batcher did not drain within %.0f s; cancelling", timeout_s)
                self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- requests ----------------------------------------------------------------------------------
    async def answer(self, call: Call, *, stream: bool) -> Answer:
        """A stream on the worker thread, outside any batch; anything else through a batch."""
        return await (self.call_direct(call) if stream else self.submit(call))

    def report(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "max_batch_delay_ms": int(self.max_delay * 1000), **self.stats.as_dict()}

    async def submit(self, call: Call) -> Answer:
        """Queue one non-streaming request and wait for its answer."""
        if self._queue is None:
            raise RuntimeError("batcher not started")
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(call, future))
        return await future

    async def call_direct(self, call: Call) -> Answer:
        """One request on the worker thread, outside any batch (streaming): the Answer may carry a stream."""
        loop = asyncio.get_running_loop()
        return (await loop.run_in_executor(self._executor, self._run, [call]))[0]

    async def call(self, function: Callable[[Any], Any], inputs: Any, what: str) -> Answer:
        """Another entry function (``register_adapter`` ...) on the worker thread, between batches, as DJL
        queues such a job for its one Python worker; its Output is read like a single request's."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, function, inputs, what)

    def _call(self, function: Callable[[Any], Any], inputs: Any, what: str) -> Answer:
        try:
            return split_output(function(inputs), 1)[0]
        except Exception:
            log.exception("%s() raised for %s", getattr(function, "__name__", "handle"), what)
            return failure_answer()

    def _run(self, calls: list[Call]) -> list[Answer]:
        try:
            output = self.handle(build_input(self.djl, calls))
            return split_output(output, len(calls))
        except Exception:
            log.exception("handle() raised for a batch of %d", len(calls))
            return [failure_answer() for _ in calls]

    async def _work(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                break
            batch = [first]
            deadline = first.enqueued + self.max_delay
            while len(batch) < self.batch_size:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get_nowait() if wait <= 0 else await asyncio.wait_for(self._queue.get(), wait)
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    stopping = True  # answer this batch and whatever is queued behind it, then stop
                    break
                batch.append(item)
            live = [p for p in batch if not p.future.done()]  # callers that went away are not computed
            if not live:
                continue
            self.stats.sizes[len(live)] += 1
            answers = await loop.run_in_executor(self._executor, self._run, [p.call for p in live])
            for pending, answer in zip(live, answers, strict=True):
                if not pending.future.done():
                    pending.future.set_result(answer)
        while not self._queue.empty():  # requests that arrived behind the stop marker
            item = self._queue.get_nowait()
            if item is not None and not item.future.done():
                answer = (await loop.run_in_executor(self._executor, self._run, [item.call]))[0]
                item.future.set_result(answer)
