"""The servers the benchmarks drive: our local endpoint and vLLM's OpenAI server, each a subprocess.

``serving`` starts one, waits until its ready route answers 200, yields its URL and start-up time, and
stops it (its whole process group: vLLM runs its engine in child processes) however the block ends.
The command builders keep both sides' flags in one place, so the side-by-side run and the figures'
write-up name the same settings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# vLLM's CPU build on 2 cores: a small KV cache (GiB) starts faster and is plenty for 16 x 128 tokens;
# its "auto" thread binding keeps one core for the scheduler and computes on the other, so the OpenMP
# threads are bound to every core, as torch uses every core on our side.
VLLM_KVCACHE_GIB = 1


class ServerFailed(RuntimeError):
    """A server exited or did not become ready; the message ends with the last line of its log."""


@dataclass(frozen=True)
class Server:
    url: str
    startup_s: float
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_line(log: Path) -> str:
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextlib.contextmanager
def serving(
    command: Sequence[str],
    *,
    port: int,
    log: Path,
    ready_path: str = "/ping",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
) -> Iterator[Server]:
    """Run ``command`` (which listens on ``port``) until the block ends; raise ``ServerFailed`` if it exits
    or its ``ready_path`` does not answer 200 within ``timeout_s``."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    name = command[2] if command[1:2] == ["-m"] else Path(command[1]).name  # the module or script it runs
    start = time.perf_counter()
    with log.open("wb") as sink:
        proc = subprocess.Popen(list(command), env={**os.environ, **(env or {})}, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                if httpx.get(url + ready_path, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise ServerFailed(f"{name} exited with {proc.returncode}: {_last_line(log)}")
            if time.perf_counter() - start > timeout_s:
                raise ServerFailed(f"{name} not ready after {timeout_s:.0f} s: {_last_line(log)}")
            time.sleep(0.5)
        yield Server(url, time.perf_counter() - start, log)
    finally:
        _stop(proc, grace_s=30)


def ours_command(model_dir: Path, port: int) -> list[str]:
    """``lora-endpoint serve`` on a plain model dir (``base/`` + ``adapters/``), in DJL async mode: one
    ``handle()`` call per request, all of them sharing the engine's steps."""
    return [sys.executable, "-m", "lora_endpoint", "serve", str(model_dir), "--port", str(port),
            "--djl-mode", "async", "--log-level", "warning"]


def ours_env(device: str, *, max_new_tokens: int, max_batch_rows: int) -> dict[str, str]:
    """The handler's settings for a benchmark: no time budget, the engine running up to ``max_batch_rows``
    rows at once (1: one request at a time, the sequential baseline)."""
    return {"LORA_DEVICE": device, "LORA_MAX_NEW_TOKENS": str(max_new_tokens),
            "LORA_DEFAULT_MAX_NEW_TOKENS": str(min(30, max_new_tokens)), "LORA_TIME_BUDGET_S": "0",
            "LORA_MAX_BATCH_ROWS": str(max_batch_rows)}


def vllm_command(python: str, model_dir: Path, port: int, *, adapters: Sequence[str], max_num_seqs: int,
                 max_model_len: int, dtype: str = "float32") -> list[str]:
    """vLLM's OpenAI server on ``model_dir/base`` with ``model_dir/adapters/<name>`` as LoRA modules. The
    module path, not the ``vllm`` console script: that one looks up a distribution named ``vllm``."""
    modules = [f"{name}={model_dir / 'adapters' / name}" for name in adapters]
    return [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir / "base"),
            "--served-model-name", "base", "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
            "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_num_seqs),
            "--enable-lora", "--lora-modules", *modules, "--max-lora-rank", "16",
            "--max-loras", str(max(1, len(adapters))), "--disable-log-stats"]


def vllm_env(cpus: int) -> dict[str, str]:
    return {"VLLM_CPU_KVCACHE_SPACE": str(VLLM_KVCACHE_GIB), "VLLM_CPU_OMP_THREADS_BIND": f"0-{cpus - 1}",
            "OMP_NUM_THREADS": str(cpus)}


def peer_versions(python: str) -> dict[str, str]:
    """vLLM, torch and transformers as the peer's python imports them; raises ``ServerFailed`` if it cannot."""
    code = "import vllm, torch, transformers; print(vllm.__version__, torch.__version__, transformers.__version__)"
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    except OSError as err:
        raise ServerFailed(f"cannot run {python}: {err}") from None
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines()
        raise ServerFailed(f"{python} cannot import vllm: {lines[-1] if lines else out.returncode}")
    vllm, torch, transformers = out.stdout.split()[-3:]
    return {"vllm": vllm, "torch": torch, "transformers": transformers}
