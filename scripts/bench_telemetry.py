"""What the metrics and request records cost: ``python scripts/bench.py telemetry [--quick] [--record]``.

One model, one engine, the DJL async entry point (``lora_endpoint.handler.entry.handle`` with the local endpoint's
stand-in for ``djl_python``): ``--clients`` concurrent clients each send requests of ``--new-tokens``
tokens (half for the base, half for an adapter). Runs alternate between telemetry **on** (every request
record written as an EMF line to a file, as the container writes them to its stdout) and **off**
(``LORA_METRICS=off``, ``LORA_REQUEST_LOG=false``: no record is built or written), ``--pairs`` times,
in ABAB order so that a shared machine's drift falls on both. Prints tokens/s of each run and the
median of the pairs' on/off ratios (the target: >= 0.99). What is on in both: the per-token counters
on each request (a few attribute updates per token).

The model is the serving benchmark's 20M Llama (``--quick``: a 1-layer one). ``--record`` writes the
figures to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench_common import commit_label, load_average, machine, positive_int, write_doc  # noqa: E402
from scripts.bench_serving import MODELS  # noqa: E402

BEGIN, END = "<!-- bench:telemetry -->", "<!-- /bench:telemetry -->"
STANDIN = ROOT / "lora_endpoint" / "local" / "djl_compat"


def build(root: Path, quick: bool) -> Path:
    from scripts.tiny_model import build_lora_adapter, build_tiny_model

    base = build_tiny_model(root / "pkg" / "base", MODELS["quick" if quick else "20m"])
    build_lora_adapter(base, root / "pkg" / "adapters" / "a0", seed=1, r=16, alpha=32,
                       target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    return root / "pkg"


async def _load(entry: Any, model_dir: Path, records: Path) -> None:
    from djl_python.inputs import Input

    await entry.handle(Input({"model_dir": str(model_dir), "telemetry_destination": str(records),
                              "metrics_endpoint": "bench", "max_batch_rows": "16"}))


async def _drive(entry: Any, clients: int, requests: int, new_tokens: int) -> tuple[float, int]:
    """Seconds and generated tokens for ``requests`` requests from ``clients`` concurrent clients."""
    from djl_python.inputs import request

    todo = list(range(requests))
    tokens = 0

    async def client() -> None:
        nonlocal tokens
        while todo:
            index = todo.pop()
            body = {"inputs": f"Request {index}: the quick brown fox", "adapters": "a0" if index % 2 else None,
                    "parameters": {"max_new_tokens": new_tokens, "ignore_eos": True, "details": True}}
            out = await entry.handle(request(json.dumps(body), Content_Type="application/json"))
            record = out.record()
            assert "code" not in record, record
            tokens += json.loads(record["data"])["details"]["generated_tokens"]

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - start, tokens


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(STANDIN))
    from lora_endpoint.handler import entry

    with tempfile.TemporaryDirectory() as tmp:
        records = Path(tmp) / "records.jsonl"
        model_dir = build(Path(tmp), args.quick)
        loop = asyncio.new_event_loop()
        loop.run_until_complete(_load(entry, model_dir, records))
        model = entry._runtime.model
        assert model is not None
        sinks = list(model.telemetry._sinks)  # what the load added: the writer to records
        loop.run_until_complete(_drive(entry, args.clients, args.clients * 2, args.new_tokens))  # warm-up
        warm_lines = sum(1 for _ in records.open())
        runs: dict[str, list[float]] = {"on": [], "off": []}
        for _ in range(args.pairs):
            for mode in ("on", "off"):
                for sink in sinks:
                    (model.telemetry.add_sink if mode == "on" else model.telemetry.remove_sink)(sink)
                seconds, tokens = loop.run_until_complete(_drive(entry, args.clients, args.requests, args.new_tokens))
                runs[mode].append(tokens / seconds)
        lines_written = sum(1 for _ in records.open()) - warm_lines
        per_record_us = _record_cost(model, sinks)
        model.engine.stop()
        loop.close()
    ratios = [on / off for on, off in zip(runs["on"], runs["off"], strict=True)]
    return {"runs": runs, "ratios": ratios, "median": statistics.median(ratios), "lines": lines_written,
            "record_us": per_record_us, "new_tokens": args.new_tokens}


def _record_cost(model: Any, sinks: list[Any], count: int = 5000) -> float:
    """Microseconds one request record costs on the request path: built, EMF-annotated, written."""
    from types import SimpleNamespace

    from lora_endpoint.handler.telemetry import Trace

    now = time.monotonic()
    handle = SimpleNamespace(tokens=32, finishes=["length"], cancelled=False, admitted_s=now, first_token_s=now,
                             last_token_s=now + 0.5)
    start = time.perf_counter()
    for index in range(count):
        trace = Trace(f"bench-{index}", started=now)
        trace.kind, trace.adapters, trace.rows, trace.prompt_tokens, trace.handle = "generate", ("a0",), 1, 12, handle
        record = model.telemetry.request_record(trace, 200, None)
        for sink in sinks:
            sink(record)
    return (time.perf_counter() - start) / count * 1e6


def report(figures: dict[str, Any], args: argparse.Namespace, command: str) -> str:
    runs = figures["runs"]
    rows = "\n".join(f"| {i + 1} | {on:.0f} | {off:.0f} | {on / off:.3f} |"
                     for i, (on, off) in enumerate(zip(runs["on"], runs["off"], strict=True)))
    return (
        f"{BEGIN}\n## Telemetry overhead (metrics on vs off)\n\n"
        f"`{command}` on {machine('cpu')}, commit {commit_label()}, load average {load_average():.1f} at the end.\n"
        f"{args.clients} clients, {args.requests} requests of {args.new_tokens} tokens per run (half base, half "
        f"adapter), through the DJL async entry point; {figures['lines']} EMF lines written in the on runs "
        "(one per request).\n\n"
        "| pair | tokens/s on | tokens/s off | on / off |\n| --- | --- | --- | --- |\n"
        f"{rows}\n\n"
        f"Median on/off: **{figures['median']:.3f}** (target >= 0.99; the pairs' spread, "
        f"{min(figures['ratios']):.3f}-{max(figures['ratios']):.3f}, is this machine's run-to-run noise).\n"
        f"One request record, built, EMF-annotated and written, alone: **{figures['record_us']:.1f} us**, "
        f"{_share(figures):.3f}% of the wall time per request of the median off run.\n{END}"
    )


def _share(figures: dict[str, Any]) -> float:
    """The record's cost as a share of the time per request, at the median off run's throughput."""
    off_tps = statistics.median(figures["runs"]["off"])
    tokens_per_request = figures["new_tokens"]
    seconds_per_request = tokens_per_request / off_tps  # requests end at this rate over all clients together
    return 100 * figures["record_us"] / 1e6 / seconds_per_request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lora-endpoint bench telemetry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1-layer model, 2 pairs (figures not written)")
    parser.add_argument("--clients", type=positive_int, default=16)
    parser.add_argument("--requests", type=positive_int, default=96, help="requests per run (default: 96)")
    parser.add_argument("--new-tokens", type=positive_int, default=32)
    parser.add_argument("--pairs", type=positive_int, default=6, help="on/off pairs (default: 6)")
    parser.add_argument("--record", action="store_true", help="write the figures to docs/benchmarks.md")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.requests = min(args.pairs, 2), min(args.requests, 32)
    command = "python scripts/bench.py telemetry " + " ".join(argv or [])
    figures = run(args)
    text = report(figures, args, command.strip())
    print(text)
    if args.record and not args.quick:
        write_doc(text, args.output, BEGIN, END)
        print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
