"""The handler on its two engines, side by side: ``python scripts/bench.py engines`` (or ``--engine vllm``).

Runs in ``.venv-vllm`` (``make vllm-venv``; vLLM's CPU build there, or the CUDA one on a GPU machine). The
same model dir is loaded twice in one process, once per engine (``LORA_ENGINE=transformers`` and ``vllm``),
and the same load goes through the handler's own request path (``service.run``) on each, taking turns per
row of the table: C concurrent clients, each asking for greedy completions of ``--tokens`` tokens (EOS
ignored), half of them through an adapter when ``--mixed``. Prints tokens/s per engine and their ratio,
and the median time to the first token of a stream under that load; ``--record`` writes them to
docs/benchmarks.md. A script, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lora_endpoint.contract.settings import HandlerSettings  # noqa: E402
from lora_endpoint.handler.engine import engine_for  # noqa: E402
from lora_endpoint.handler.generate import GenerateRequest  # noqa: E402
from lora_endpoint.handler.loading import LoadedModel, load_model  # noqa: E402
from lora_endpoint.handler.sampling import SamplingParams  # noqa: E402
from lora_endpoint.handler.service import run  # noqa: E402
from lora_endpoint.handler.streaming import stream  # noqa: E402
from scripts.bench_common import (  # noqa: E402
    commit_label,
    load_average,
    machine,
    positive_int,
    positive_list,
    settle,
    write_doc,
)
from scripts.bench_serving import MODELS  # noqa: E402

BEGIN, END = "<!-- bench:engines -->", "<!-- /bench:engines -->"
PROMPT = "The quick brown fox jumps over the lazy dog and then"


def build(root: Path, model: str) -> Path:
    from scripts.tiny_model import build_lora_adapter, build_tiny_model

    base = build_tiny_model(root / "pkg" / "base", MODELS[model])
    build_lora_adapter(base, root / "pkg" / "adapters" / "alpha", seed=3, r=16, alpha=32, scale=2.0,
                       target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    return root / "pkg"


def _request(adapter: str | None, tokens: int, stream_it: bool = False) -> GenerateRequest:
    return GenerateRequest(inputs=(PROMPT,), adapters=(adapter,), stream=stream_it,
                           params=SamplingParams(max_new_tokens=tokens, ignore_eos=True))


def load(lm: LoadedModel, clients: int, tokens: int, rounds: int, mixed: bool) -> dict[str, float]:
    """``clients`` threads, each sending ``rounds`` requests one after another; tokens/s over the whole."""
    done: list[int] = []
    first_tokens: list[float] = []

    def client(index: int) -> None:
        adapter = "alpha" if mixed and index % 2 else None
        for _ in range(rounds):
            answer = run(lm, [_request(adapter, tokens)])[0]
            if not isinstance(answer, dict):
                raise RuntimeError(f"request failed: {answer}")
            done.append(tokens)

    def streamer() -> None:  # one stream beside the load: its time to first token
        for _ in range(max(1, rounds)):
            started = time.perf_counter()
            chunks = stream(lm, _request(None, 4, stream_it=True))
            next(iter(chunks))
            first_tokens.append(time.perf_counter() - started)
            for _ in chunks:
                pass

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    ttft = threading.Thread(target=streamer)
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    ttft.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ttft.join()
    return {"tokens_per_s": sum(done) / elapsed, "ttft_ms": statistics.median(first_tokens) * 1000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-endpoint bench engines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="20m", help="benchmark model (default 20m)")
    parser.add_argument("--clients", type=positive_list, default=(1, 4, 16),
                        help="concurrent clients per row, comma-separated (default 1,4,16)")
    parser.add_argument("--tokens", type=positive_int, default=64, help="tokens per completion (default 64)")
    parser.add_argument("--rounds", type=positive_int, default=2, help="requests per client (default 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--record", action="store_true", help="write the table to docs/benchmarks.md")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from lora_endpoint.handler.engine_choice import available

    if not available():
        parser.error("vLLM is not installed in this Python: run it with .venv-vllm/bin/python (make vllm-venv)")
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        model_dir = build(Path(tmp), args.model)
        engines: dict[str, LoadedModel] = {}
        for name in ("transformers", "vllm"):
            settings = HandlerSettings(engine=name, device=args.device, max_batch_rows=max(args.clients),
                                       time_budget_s=0, max_queue=4 * max(args.clients))
            engines[name] = load_model(model_dir, settings)
            engine_for(engines[name])
            run(engines[name], [_request(None, 4), _request("alpha", 4)])  # warm
        rows: list[dict[str, Any]] = []
        for mixed in (False, True):
            for clients in args.clients:
                row: dict[str, Any] = {"clients": clients, "mixed": mixed}
                for name, lm in engines.items():
                    settle()
                    row[name] = load(lm, clients, args.tokens, args.rounds, mixed)
                rows.append(row)
                print(row, file=sys.stderr)
        for lm in engines.values():
            lm.engine.stop()
    lines = [
        BEGIN,
        "## The handler on its two engines",
        "",
        f"`python scripts/bench.py engines{' --device cuda' if args.device == 'cuda' else ''} --record` (run with "
        f".venv-vllm's python) on commit {commit_label()}, {machine(args.device)}, load average "
        f"{load_average():.1f}; the serving benchmark's {args.model} model, {args.tokens}-token greedy completions "
        f"through the handler's request path, {args.rounds} per client; a 4-token stream beside the load gives "
        "the time to first token.",
        "",
        "| clients | adapters | transformers tok/s | vLLM tok/s | vLLM / transformers | TTFT transformers / vLLM |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        ours, peer = row["transformers"], row["vllm"]
        lines.append(
            f"| {row['clients']} | {'half alpha, half base' if row['mixed'] else 'base'} | "
            f"{ours['tokens_per_s']:.0f} | {peer['tokens_per_s']:.0f} | "
            f"{peer['tokens_per_s'] / ours['tokens_per_s']:.2f}x | {ours['ttft_ms']:.0f} / {peer['ttft_ms']:.0f} ms |")
    lines += ["", END]
    section = "\n".join(lines)
    print(section)
    if args.record:
        write_doc(section, args.output, BEGIN, END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
