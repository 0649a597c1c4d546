"""What the benchmark scripts share: prompts, in-process batch figures through the handler's ``run()``,
the machine and commit they ran on, and the writer of their sections in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lora_endpoint.handler.generate import GenerateRequest
from lora_endpoint.handler.loading import LoadedModel
from lora_endpoint.handler.sampling import SamplingParams
from lora_endpoint.handler.service import run
from lora_endpoint.handler.threads import on_own_thread

ROOT = Path(__file__).resolve().parents[1]
# Every request runs to exactly its token count (ignore_eos): the random model's early EOS would otherwise
# make latencies incomparable.
PROMPTS = ["The quick brown fox", "A LoRA adapter adds", "SageMaker endpoints serve", "Hello world, this is"]


def positive_list(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers, each at least 1."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be at least 1, got {text!r}")
    return values


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer of at least 1, got {text!r}")
    return value


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Median wall time of ``repeat`` calls after one warm-up, and the last result."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def on_fresh_thread(fn: Callable[[], Any]) -> Any:
    """``fn()`` on a thread that ends with it: a bare-model figure taken on the main thread would leave a
    torch thread pool there that slows every engine figure after it (lora_endpoint/handler/loading.py)."""
    return on_own_thread(fn, name="bench")


def request(prompts: list[str], adapters: list[str | None], new_tokens: int) -> GenerateRequest:
    """One greedy generate request of several rows, each running to ``new_tokens``."""
    return GenerateRequest(
        inputs=tuple(prompts),
        adapters=tuple(adapters),
        is_list=True,
        params=SamplingParams(max_new_tokens=new_tokens, ignore_eos=True),
    )


def tokens_of(answers: list[Any]) -> int:
    return sum(item["details"]["generated_tokens"] for answer in answers for item in answer)


def bench_mixed(multi: LoadedModel, rows: int, new_tokens: int, repeat: int) -> dict[str, float]:
    """One batch of ``rows`` rows: all on adapter a0 vs spread over four adapters."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(rows)]
    names = sorted(multi.adapters)
    single_s, single = timed(lambda: run(multi, [request(prompts, ["a0"] * rows, new_tokens)]), repeat)
    mixed_s, mixed = timed(
        lambda: run(multi, [request(prompts, [names[i % len(names)] for i in range(rows)], new_tokens)]), repeat
    )
    single_tps, mixed_tps = tokens_of(single) / single_s, tokens_of(mixed) / mixed_s
    return {"single_adapter_tok_s": single_tps, "mixed_adapter_tok_s": mixed_tps, "ratio": mixed_tps / single_tps}


def bench_static(lm: LoadedModel, rows: int, new_tokens: int, repeat: int) -> dict[str, float]:
    """The ideal static batch: ``rows`` identical prompts on the base model in one ``run()`` call."""
    one = request([PROMPTS[0]] * rows, [None] * rows, new_tokens)
    seconds, answers = timed(lambda: run(lm, [one]), repeat)
    return {"rows": rows, "seconds": seconds, "tok_s": tokens_of(answers) / seconds}


def release(lm: LoadedModel) -> None:
    """Stop the model's engine thread (which holds the model) so that the next figure runs alone."""
    if lm.engine is not None:
        lm.engine.stop()
        lm.engine = None
    gc.collect()


def cpu_busy(window_s: float = 0.5) -> float:
    """The share of the machine's CPU time (0-1, all cores) not idle over ``window_s`` (/proc/stat)."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # idle + iowait

    total0, idle0 = snapshot()
    time.sleep(window_s)
    total1, idle1 = snapshot()
    return 1 - (idle1 - idle0) / max(1, total1 - total0)


def settle(threshold: float = 0.1, timeout_s: float = 15.0) -> float:
    """Wait until the machine is quiet (``cpu_busy`` below ``threshold``) or ``timeout_s`` has passed, and
    return the seconds waited. vLLM's CPU worker keeps a core busy for about a second after its last
    request; without this, whichever side runs next would pay for it. Returns at once where /proc/stat
    is missing."""
    start = time.perf_counter()
    try:
        while cpu_busy() >= threshold and time.perf_counter() - start < timeout_s:
            pass
    except OSError:
        pass
    return time.perf_counter() - start


def load_average() -> float:
    """The 1-minute load average (the machine may be shared: other work slows every row alike)."""
    return os.getloadavg()[0]


def machine(device: str) -> str:
    import torch

    text = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, device {device}"
    return text + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else "")


def commit_label() -> str:
    """The commit the code ran from, marked when the work tree had uncommitted changes."""
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "handler", "scripts", "lora_endpoint.packaging")
    return head + (" with uncommitted changes" if dirty else "")


def write_doc(section: str, path: Path, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the text between those
    markers in ``path``, or append it; the rest of the file is kept as it is."""
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nEvery figure here was written by the command shown with it.\n"
    )
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # never a half-written file
