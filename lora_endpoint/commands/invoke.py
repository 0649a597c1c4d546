"""Call the endpoint once and print the answer, its status and the latency.

    lora-endpoint invoke --endpoint-url http://127.0.0.1:8080 --prompt "Hello" --adapter alpha
    lora-endpoint invoke --endpoint-name my-endpoint --region eu-west-1 --body '{"inputs": "Hi"}' --stream
    lora-endpoint invoke --endpoint-name my-endpoint --inference-component sql --prompt "SELECT"  # an adapter component
    lora-endpoint invoke --api-url https://ID.execute-api.REGION.amazonaws.com/prod --sigv4 --route chat --prompt Hi

Exit codes: 0 the call succeeded, 1 the endpoint answered an error (or could not be reached),
2 the command line was wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from lora_endpoint.clients.target import Reply, TargetError, add_target_args, target_from_args

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


def build_body(route: str, body: str | None, prompt: str | None, max_new_tokens: int | None) -> dict[str, Any]:
    """The request body from ``--body`` or ``--prompt`` (in the route's shape)."""
    if body is not None:
        data = json.loads(body)
        if not isinstance(data, dict):
            raise ValueError("--body must be a JSON object")
        return data
    if route == "chat":
        out: dict[str, Any] = {"messages": [{"role": "user", "content": prompt}]}
        if max_new_tokens:
            out["max_tokens"] = max_new_tokens
        return out
    out = {"inputs": prompt}
    if max_new_tokens:
        out["parameters"] = {"max_new_tokens": max_new_tokens}
    return out


def answer_text(reply: Reply) -> str:
    """The generated text when the answer has one (plain, streamed JSON lines, SSE chat), else the raw body."""
    data = reply.json()
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    if isinstance(data, dict):
        if "generated_text" in data:
            return str(data["generated_text"])
        if data.get("choices"):
            return str(data["choices"][0].get("message", {}).get("content", ""))
    pieces = []
    for line in reply.text.splitlines():
        line = line.removeprefix("data: ").strip()
        if not line or line == "[DONE]":
            continue
        try:
            item = json.loads(line)
        except ValueError:
            return reply.text
        if "token" in item:
            pieces.append(item["token"].get("text", ""))
        for choice in item.get("choices", []):
            pieces.append(choice.get("delta", {}).get("content", ""))
    return "".join(pieces) if pieces else reply.text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lora-endpoint invoke",
        description="Call a local or deployed endpoint once; print text, status and latency.",
        epilog=__doc__.split("\n\n", 1)[1] if __doc__ else None, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    what = parser.add_argument_group("request")
    source = what.add_mutually_exclusive_group(required=True)
    source.add_argument("--body", help="the request body as JSON")
    source.add_argument("--prompt", help="a prompt, sent in the route's shape")
    what.add_argument("--route", default="predict", choices=["predict", "chat", "rag", "info", "invoke"],
                      help="API route for --api-url; with boto3 every route is a body shape (default: predict)")
    what.add_argument("--adapter", help="adapter to use (header X-Amzn-SageMaker-Adapter-Identifier with boto3)")
    what.add_argument("--max-new-tokens", type=int, help="with --prompt: max_new_tokens / max_tokens")
    what.add_argument("--stream", action="store_true", help="stream the answer (invoke_endpoint_with_response_stream)")
    what.add_argument("--raw", action="store_true", help="print the raw body instead of the generated text")
    args = parser.parse_args(argv)
    try:
        body = build_body(args.route, args.body, args.prompt, args.max_new_tokens)
        target = target_from_args(args)
    except (ValueError, TargetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    reply = target.call(args.route, body, adapter=args.adapter, stream=args.stream)
    print(reply.text if args.raw or not reply.ok else answer_text(reply))
    detail = f", {reply.chunks} chunks" if args.stream else ""
    print(f"status {reply.status or 'unreachable'}, {reply.latency_s * 1000:.0f} ms{detail} ({target.describe()})",
          file=sys.stderr)
    return EXIT_OK if reply.ok else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
