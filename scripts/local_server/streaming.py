"""Bridge a handler's (synchronous) chunk iterator to an async response body.

A pump thread pulls chunks as fast as the model produces them, so a slow reader never holds the
model lock; when the client goes away the async side is cancelled, the pump is told to stop and it
closes the handler's generator, which ends generation at the next token. A stream that fails after its
first byte, or that is still running when a shutdown's drain time is up, ends with an error record in
its own format (the handler's ``error_record``): the status is sent already, so the body must say it.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

from handler.errors import GenerationFailed, ServiceUnavailable
from handler.streaming import error_record

from .djl_io import Answer

_END = object()


class StreamFailed(Exception):
    """The handler's stream raised after the first byte (the status is already sent)."""


class StreamExpired(Exception):
    """The endpoint is shutting down and the drain time for this stream is up."""


async def pump(chunks: Iterator[bytes], expired: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """Yield ``chunks`` from a worker thread; closing this async iterator closes ``chunks``.

    Raises ``StreamFailed`` if the handler's iterator raises, ``StreamExpired`` once ``expired`` is set.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            for chunk in chunks:
                if stop.is_set():
                    break
                loop.call_soon_threadsafe(queue.put_nowait, chunk)
        except Exception as err:  # reported to the reader, which decides how to tell the client
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, StreamFailed(type(err).__name__))
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
            with contextlib.suppress(RuntimeError):  # the loop is closed already (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=run, name="stream-pump", daemon=True)
    thread.start()
    stopping = asyncio.ensure_future(expired.wait()) if expired is not None else None
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            waiting = {getting} if stopping is None else {getting, stopping}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getting not in done:
                getting.cancel()
                raise StreamExpired()
            item = getting.result()
            if item is _END:
                break
            if isinstance(item, StreamFailed):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
        if stopping is not None:
            stopping.cancel()


async def pump_answer(answer: Answer, expired: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """``pump`` for an HTTP body: a failure or the end of the drain time becomes the last record."""
    assert answer.stream is not None
    chunks = pump(answer.stream, expired)
    try:
        async for chunk in chunks:
            yield chunk
    except StreamFailed:
        yield error_record(GenerationFailed(), answer.content_type)
    except StreamExpired:
        yield error_record(ServiceUnavailable("the endpoint is shutting down; retry"), answer.content_type)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
