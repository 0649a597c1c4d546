"""Smoke-test a local or deployed endpoint and print a pass/fail table.

    lora-endpoint smoke --endpoint-url http://127.0.0.1:8080            # the local endpoint, through boto3
    lora-endpoint smoke --endpoint-name my-endpoint --region eu-west-1   # a deployed endpoint, through boto3
    lora-endpoint smoke --api-url https://ID.execute-api.REGION.amazonaws.com/prod --sigv4

Checks: health, model info, a base-model request, one request per adapter (from info), one chat, one
RAG request, a bad request expecting 400 and an unknown adapter expecting 404.
Exit codes: 0 every check passed, 1 a check failed, 2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict

from lora_endpoint.clients.smoke import run_smoke, table
from lora_endpoint.clients.target import TargetError, add_target_args, target_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-endpoint smoke",
        description="Smoke-test a local or deployed endpoint; exit 0 only when all checks pass.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    parser.add_argument("--max-new-tokens", type=int, default=8, help="tokens per generation (default: 8)")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON instead of a table")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        parser.error("--max-new-tokens must be at least 1")
    try:
        target = target_from_args(args)
    except TargetError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    checks = run_smoke(target, max_new_tokens=args.max_new_tokens)
    if args.json:
        print(json.dumps({"target": target.describe(), "checks": [asdict(c) for c in checks],
                          "passed": all(c.passed for c in checks)}, indent=2))
    else:
        print(f"smoke test of {target.describe()}")
        print(table(checks))
    return EXIT_OK if all(c.passed for c in checks) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
