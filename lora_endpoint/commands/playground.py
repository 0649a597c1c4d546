"""Open the playground page against any endpoint: a proxy on localhost serves the page and forwards its calls.

    lora-endpoint playground --endpoint-url http://127.0.0.1:8080
    lora-endpoint playground --endpoint-name lora-endpoint --region us-east-1 --profile dev --open
    lora-endpoint playground --api-url https://ID.execute-api.us-east-1.amazonaws.com/prod --sigv4

The target options are invoke's: --endpoint-url (the local endpoint, through its SageMaker runtime API),
--endpoint-name with --region / --profile (a deployed endpoint through boto3, which streams), or --api-url
(the API Gateway routes with --sigv4 or --api-key, whole answers only; or the local endpoint's own routes).
The proxy signs with your credentials, so it listens on 127.0.0.1 and answers only its own page. The local
endpoint serves the same page itself at /playground (lora-endpoint serve PACKAGE --open).

Exit codes: 0 stopped with Ctrl-C, 1 the port could not be opened, 2 a bad command line (one line on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import webbrowser
from collections.abc import Sequence
from typing import NoReturn

from lora_endpoint.clients.target import TargetError, add_target_args, target_from_args

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_PORT = 8090


class _Parser(argparse.ArgumentParser):
    """argparse, with a wrong command line as one line on stderr (not the usage block) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _Parser(prog="lora-endpoint playground", description=(__doc__ or "").split("\n\n")[0],
                     epilog=(__doc__ or "").split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_args(parser)
    proxy = parser.add_argument_group("the proxy")
    proxy.add_argument("--host", default="127.0.0.1",
                       help="interface to listen on (default: 127.0.0.1; the proxy calls with your credentials)")
    proxy.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default: {DEFAULT_PORT})")
    proxy.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                       help="another host name the proxy answers to (besides 127.0.0.1, localhost and --host)")
    proxy.add_argument("--no-stream", action="store_true", help="ask for whole answers, never streams")
    proxy.add_argument("--open", action="store_true", help="open the page in the default browser")
    proxy.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                       help="uvicorn's log level (default: warning)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.timeout <= 0:
        parser.error(f"--timeout must be positive, got {args.timeout:g}")
    return args


def _can_listen(host: str, port: int) -> str | None:
    """Why the proxy cannot listen on ``host:port``, or None."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(infos[0][4])
    except OSError as err:
        return f"cannot listen on {host}:{port}: {err.strerror or err}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        target = target_from_args(args)
    except TargetError as err:
        print(f"lora-endpoint playground: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    problem = _can_listen(args.host, args.port)
    if problem:
        print(f"lora-endpoint playground: error: {problem}", file=sys.stderr)
        return EXIT_FAILED
    import uvicorn

    from lora_endpoint.clients.playground import LOOPBACK, create_proxy_app, target_info
    from lora_endpoint.local.playground_page import page_url

    info = target_info(target, streaming=not args.no_stream)
    hosts = {*LOOPBACK, *args.allow_host}
    if args.host not in ("0.0.0.0", "::"):
        hosts.add(args.host)
    app = create_proxy_app(target, info=info, hosts=hosts)
    url = page_url(args.host, args.port)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    streams = "streaming" if info["streaming"] else "whole answers"
    print(f"playground on {url} -> {target.describe()} ({streams}); Ctrl-C stops it", file=sys.stderr)
    if args.open:
        def open_when_up() -> None:
            while not server.started and not server.should_exit:
                threading.Event().wait(0.05)
            if server.started:
                webbrowser.open(url)

        threading.Thread(target=open_when_up, name="open-browser", daemon=True).start()
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on Ctrl-C by itself; this is the second one
        server.run()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
