"""Running work on a thread of its own that ends with it (standard library only)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")


def on_own_thread(fn: Callable[[], T], *, name: str) -> T:
    """``fn()`` on a thread that ends with it (so does its torch thread pool, see ``loading.load_model``); what it
    raises is raised here, as if it had run on the caller's thread."""
    outcome: list[Any] = []

    def work() -> None:
        try:
            outcome.append(fn())
        except BaseException as err:
            outcome.append(err)

    worker = threading.Thread(target=work, name=name, daemon=True)
    worker.start()
    worker.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return cast(T, outcome[0])


