"""Response bodies that stream: a sync handler's chunk iterator made async, the drain's deadline, and
the error record a stream ends with when it fails after its first byte.

Every streamed ``Answer`` carries an async iterator of chunks: in sync mode ``pump`` bridges the
handler's (synchronous) iterator from a worker thread, so a slow reader never holds the model; in async
mode the chunks come from the handler's async generator (``async_frontend``). ``guarded`` reads either
until it ends, fails or the shutdown's drain time is up, and closes it when the reader stops - the
client went away - which ends generation: the pump closes the handler's generator, the async generator
is closed and the engine drops its rows. A failure after the first byte ends the body with an error
record in its own format (the handler's ``error_record``): the status is sent already, so the body
must say it. Plain asyncio only (no web framework): the compat tier drives streams without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from lora_endpoint.contract.errors import GenerationFailed, ServiceUnavailable
from lora_endpoint.handler.streaming import error_record

if TYPE_CHECKING:
    from .djl_io import Answer

_END = object()


class StreamFailed(Exception):
    """The handler's stream raised after the first byte (the status is already sent)."""


class StreamExpired(Exception):
    """The endpoint is shutting down and the drain time for this stream is up."""


def _quietly(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a close that failed is nobody's to report


async def _shielded(awaitable: Any) -> None:
    """Run ``awaitable`` to its end in a task of its own: a reader that is being cancelled (a client
    that went away; Starlette cancels it again at every await) stops waiting, the task goes on."""
    task = asyncio.ensure_future(awaitable)
    task.add_done_callback(_quietly)
    with contextlib.suppress(Exception):
        await asyncio.shield(task)


async def close_stream(stream: Any) -> None:
    """Close an async iterator, also while its reader is being cancelled: the close is what tells the
    handler to stop."""
    close = getattr(stream, "aclose", None)
    if close is not None:
        await _shielded(close())


async def pump(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Yield a sync handler's ``chunks`` from a worker thread; closing this closes ``chunks``.

    Raises ``StreamFailed`` if the handler's iterator raises.
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

    threading.Thread(target=run, name="stream-pump", daemon=True).start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, StreamFailed):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        stop.set()


async def guarded(stream: AsyncIterator[bytes], expired: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """``stream``'s chunks until it ends; raises ``StreamFailed`` when it raises and ``StreamExpired`` once
    ``expired`` is set. Closing this (or cancelling its reader) closes ``stream``."""
    stopping: asyncio.Future[Any] | None = asyncio.ensure_future(expired.wait()) if expired is not None else None
    try:
        while True:
            step: asyncio.Future[Any] = asyncio.ensure_future(stream.__anext__())
            try:
                waiting = {step} if stopping is None else {step, stopping}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not step.done():  # cancelled (the client went away) or expired: stop the producer
                    step.cancel()
                    await _shielded(asyncio.wait([step]))
            if step not in done:
                raise StreamExpired()
            try:
                chunk = step.result()
            except StopAsyncIteration:
                return
            except StreamFailed:
                raise
            except Exception as err:
                raise StreamFailed(type(err).__name__) from err
            yield chunk
    finally:
        if stopping is not None:
            stopping.cancel()
        await close_stream(stream)


async def pump_answer(answer: Answer, expired: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """An answer's stream as an HTTP body: a failure or the end of the drain time becomes the last record."""
    assert answer.stream is not None
    chunks = guarded(answer.stream, expired)
    try:
        async for chunk in chunks:
            yield chunk
    except StreamFailed:
        yield error_record(GenerationFailed(), answer.content_type)
    except StreamExpired:
        yield error_record(ServiceUnavailable("the endpoint is shutting down; retry"), answer.content_type)
    finally:
        await close_stream(chunks)
