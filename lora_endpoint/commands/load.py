"""Load-test a local or deployed endpoint: concurrent clients, bounded by a request count and/or a duration.

    lora-endpoint load --endpoint-url http://127.0.0.1:8080 --concurrency 8 --requests 200
    lora-endpoint load --api-url http://127.0.0.1:8080 --duration 30 --adapters base,alpha,beta --stream --json

Reports p50/p90/p99 latency, requests/s, generated tokens/s and errors by status. It always stops by
itself: at --requests (default 100 when --duration is not given) or after --duration, whichever
comes first. Exit codes: 0 no request failed, 1 some failed, 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lora_endpoint.clients.load import DEFAULT_PROMPTS, run_load
from lora_endpoint.clients.target import TargetError, add_target_args, target_from_args

EXIT_OK, EXIT_ERRORS, EXIT_USAGE = 0, 1, 2
BASE = ("", "base")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-endpoint load", description="Load-test a local or deployed endpoint (bounded in count and time).",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    load = parser.add_argument_group("load")
    load.add_argument("--concurrency", type=int, default=4, help="concurrent clients (default: 4)")
    load.add_argument("--requests", type=int, help="requests in all (default: 100 when --duration is not given)")
    load.add_argument("--duration", type=float, help="stop after this many seconds")
    load.add_argument("--prompts", help="a file with one prompt per line (default: a built-in mix of 4)")
    load.add_argument("--adapters", default="base",
                      help="comma-separated adapter mix, 'base' for the base model (default: base)")
    load.add_argument("--max-new-tokens", type=int, default=16, help="tokens per request (default: 16)")
    load.add_argument("--stream", action="store_true", help="stream every answer")
    load.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.concurrency > 1024:
        parser.error("--concurrency must be 1..1024")
    if args.requests is not None and args.requests < 1:
        parser.error("--requests must be at least 1")
    if args.duration is not None and args.duration <= 0:
        parser.error("--duration must be more than 0")
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    prompts: Sequence[str] = DEFAULT_PROMPTS
    if args.prompts:
        try:
            prompts = [line.strip() for line in Path(args.prompts).read_text(encoding="utf-8").splitlines()
                       if line.strip()]
        except OSError as err:
            parser.error(f"--prompts: {err}")
        if not prompts:
            parser.error(f"--prompts: {args.prompts} holds no prompt")
    adapters = [None if a.strip() in BASE else a.strip() for a in args.adapters.split(",")]
    try:
        target = target_from_args(args)
    except TargetError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    report = run_load(target, concurrency=args.concurrency, requests=args.requests, duration_s=args.duration,
                      prompts=prompts, adapters=adapters, stream=args.stream, max_new_tokens=args.max_new_tokens)
    result = {"target": target.describe(), "concurrency": args.concurrency, "stream": args.stream,
              **report.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        lat = result["latency_ms"]
        print(f"{target.describe()}: {report.requests} requests ({report.ok} ok) in {report.elapsed_s:.2f} s "
              f"with {args.concurrency} clients")
        print(f"  {result['requests_per_s']} requests/s, {result['tokens_per_s']} generated tokens/s")
        print(f"  latency p50 {lat['p50']} ms, p90 {lat['p90']} ms, p99 {lat['p99']} ms")
        print(f"  errors by status: {result['errors'] or 'none'}")
    return EXIT_OK if report.requests and report.requests == report.ok else EXIT_ERRORS


if __name__ == "__main__":
    sys.exit(main())
