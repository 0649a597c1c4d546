"""What an engine hands back for a submitted request (``Handle``), and the bounds and counters every engine
shares; the transformers engine (``engine``) and the vLLM one (``vllm_engine``) both answer with these."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .generation import Delta, Row, RowResult, collect

log = logging.getLogger("lora_endpoint.handler")

_DONE = object()


@dataclass(frozen=True)
class EngineLimits:
    """The engine's bounds (from ``HandlerSettings``; see docs/handler.md, Engine)."""

    max_rows: int
    kv_tokens: int
    prefill_tokens: int
    max_queue: int


class Handle:
    """One submitted request: its rows' deltas arrive step by step; ``cancel`` drops its rows."""

    def __init__(self, rows: Sequence[Row], deadline: float | None, loop: asyncio.AbstractEventLoop | None) -> None:
        self.rows = list(rows)
        self.deadline = deadline
        self.cancelled = False
        # Engine iterations at which the request was taken in and got its first token (for TTFT checks).
        self.arrived_at: int | None = None
        self.first_token_at: int | None = None
        self._loop = loop
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._async: asyncio.Queue[Any] | None = asyncio.Queue() if loop is not None else None
        self._on_release: Callable[[], None] | None = None
        # Wall-clock figures for the request's metrics (time.monotonic()): when the engine took the rows
        # in, first and last token; tokens generated and each row's finish reason.
        self.admitted_s: float | None = None
        self.first_token_s: float | None = None
        self.last_token_s: float | None = None
        self.tokens = 0
        self.finishes: list[str | None] = [None] * len(self.rows)

    def _release(self) -> None:
        """The engine holds none of this request's rows any more (finished, failed, cancelled or never
        admitted): what was held for it (its adapters' lease) is let go, once."""
        hook, self._on_release = self._on_release, None
        if hook is not None:
            try:
                hook()
            except Exception:  # the engine thread must not die of a caller's hook
                log.exception("releasing a request failed")

    def _put(self, item: Any) -> None:
        if type(item) is list:
            self._count(item)
        if self._loop is not None and self._async is not None:
            try:
                self._loop.call_soon_threadsafe(self._async.put_nowait, item)
            except RuntimeError:  # the caller's loop is closed: nobody is listening any more
                self.cancelled = True
        else:
            self._queue.put(item)

    def _count(self, step: list[Delta]) -> None:
        now = time.monotonic()
        if self.first_token_s is None:
            self.first_token_s = now
        self.last_token_s = now
        for delta in step:
            if delta.token_id >= 0:
                self.tokens += 1
            if delta.finish_reason is not None and 0 <= delta.row < len(self.finishes):
                self.finishes[delta.row] = delta.finish_reason

    def cancel(self) -> None:
        self.cancelled = True

    def steps(self) -> Generator[list[Delta], None, None]:
        """The deltas of each engine iteration that touched this request, until its last row ends."""
        try:
            while True:
                item = self._queue.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()  # the consumer stopped (or the request ended): nothing more to compute

    async def asteps(self) -> AsyncGenerator[list[Delta], None]:
        """``steps`` for a caller on an event loop (the handle must have been submitted with ``loop``)."""
        assert self._async is not None, "submit(..., loop=...) to read steps asynchronously"
        try:
            while True:
                item = await self._async.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()

    def results(self) -> list[RowResult]:
        """Wait for the whole request and collect each row's result."""
        return collect(self.rows, self.steps())

    async def aresults(self) -> list[RowResult]:
        """``results`` on the event loop."""
        return collect(self.rows, [step async for step in self.asteps()])


@dataclass
class EngineStats:
    """Counters for tests, benchmarks and (later) metrics."""

    iterations: int = 0
    decode_steps: int = 0
    prefill_passes: int = 0
    largest_batch: int = 0
    admitted: int = 0
    overloaded: int = 0
    waiting: int = 0
    running_rows: int = 0
    kv_tokens_allocated: int = 0
    generated_tokens: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)
