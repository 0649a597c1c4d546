"""Bridge a handler's (synchronous) chunk iterator to an async response body.

A pump thread pulls chunks as fast as the model produces them, so a slow reader never holds the
model lock; when the client goes away the async side is cancelled, the pump is told to stop and it
closes the handler's generator, which ends generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator

_END = object()


class StreamFailed(Exception):
    """The handler's stream raised after the first byte (the status is already sent)."""


async def pump(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield ``chunks`` from a worker thread; closing this async iterator closes ``chunks``."""
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
            loop.call_soon_threadsafe(queue.put_nowait, StreamFailed(type(err).__name__))
        finally:
            close = getattr(chunks, "close", None)
            if callable(close):
                close()
            with contextlib.suppress(RuntimeError):  # the loop is closed already (shutdown)
                loop.call_soon_threadsafe(queue.put_nowait, _END)

    thread = threading.Thread(target=run, name="stream-pump", daemon=True)
    thread.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, StreamFailed):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()
