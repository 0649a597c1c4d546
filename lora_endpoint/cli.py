"""``lora-endpoint``: one command for the whole path from adapter folders to an endpoint.

Each subcommand is a module of ``lora_endpoint.commands`` (or the packager's CLI) with its own ``--help``,
progress and exit codes; this module only picks one. Modules load on demand, so ``--help`` and the light
commands never import torch.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from lora_endpoint import __version__

EXIT_USAGE = 2
# name -> (module with main(argv) -> int, one line for --help). In pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("lora_endpoint.commands.train", "fine-tune a LoRA adapter on prompt/response pairs or chats"),
    "package": ("lora_endpoint.packaging.cli", "validate adapters, build model.tar.gz (or a tree), upload it; "
                "extract one safely"),
    "serve": ("lora_endpoint.commands.serve", "serve a package on localhost the way the container does"),
    "invoke": ("lora_endpoint.commands.invoke", "call an endpoint (local, SageMaker or API Gateway) once"),
    "smoke": ("lora_endpoint.commands.smoke", "check an endpoint end to end; exit 0 only if all checks pass"),
    "load": ("lora_endpoint.commands.load", "load-test an endpoint: latency percentiles, tokens/s, errors"),
    "adapters": ("lora_endpoint.commands.adapters", "add, remove or list adapters live, no redeploy"),
    "playground": ("lora_endpoint.commands.playground", "a page to try base and adapters side by side, streaming, "
                   "against any endpoint"),
    "deploy": ("lora_endpoint.commands.deploy", "package, upload and cdk deploy in one go (source checkout)"),
    "bench": ("lora_endpoint.commands.bench", "benchmarks, recorded in docs/benchmarks.md (source checkout)"),
    "demo": ("lora_endpoint.commands.demo", "the whole pipeline offline on a tiny model (source checkout)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_module, summary) in COMMANDS.items()]
    return "\n".join([
        "usage: lora-endpoint COMMAND [ARGS...]",
        "",
        "From a folder of LoRA adapters to a SageMaker endpoint behind API Gateway.",
        "",
        "commands:",
        *lines,
        "",
        "options:",
        "  -h, --help  show this help and exit",
        "  --version   show the version and exit",
        "",
        "`lora-endpoint COMMAND --help` explains each one. Exit codes: 0 success, 1 failure, 2 bad input or",
        "command line (the exact meanings per command are in its --help).",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lora-endpoint``; return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if args else sys.stderr)
        return 0 if args else EXIT_USAGE
    if args[0] == "--version":
        print(f"lora-endpoint {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"lora-endpoint: unknown command {name[:100]!r}; choose from {', '.join(COMMANDS)} "
              "(lora-endpoint --help)", file=sys.stderr)
        return EXIT_USAGE
    command = importlib.import_module(COMMANDS[name][0])
    code: int = command.main(rest)
    return code


if __name__ == "__main__":
    sys.exit(main())
