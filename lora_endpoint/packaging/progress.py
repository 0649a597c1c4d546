"""Progress bars on stderr for the long steps (hashing, compressing, copying, uploading)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A thread-safe ``on_bytes`` callback driving a tqdm bar on stderr (a no-op when disabled)."""
    if not enabled:
        yield lambda n: None
        return
    from tqdm import tqdm

    lock = threading.Lock()
    with tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
              leave=False, dynamic_ncols=True) as bar:
        def update(n: int) -> None:
            with lock:
                bar.update(n)

        yield update
