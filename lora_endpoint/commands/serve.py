"""Serve a model package on localhost through the same model.py / handle() path the container uses.

    lora-endpoint serve PACKAGE [--host 127.0.0.1] [--port 8080] [--djl-mode async|sync] [--batch-size N]

PACKAGE is a ``model.tar.gz``, an extracted package dir, or a plain model dir (``base/`` +
``adapters/``). The package's ``serving.properties`` picks DJL's mode as the container does:
``option.async_mode=true`` (what ``lora-endpoint package build`` writes) awaits the async ``handle`` once per
request; otherwise the sync ``handle`` gets DJL batches from an in-process batcher. An archive or dir
with ``manifest.json`` is checked against it before any of its code runs; code without one is refused
unless ``--allow-no-manifest``. Routes: the container contract
(``GET /ping``, ``POST /invocations``), the SageMaker runtime API (boto3 with
``endpoint_url=http://127.0.0.1:PORT``), the API Gateway routes (``/predict``, ``/rag``,
``/v1/chat/completions``, ``/health``, ``/model/info``), the adapter routes (``POST /adapters``,
``DELETE /adapters/{name}``, ``GET /v1/models``), the local routes (``GET /local/stats``, ``GET /metrics``:
Prometheus' text format) and ``/docs``. The handler writes one JSON line per request to stdout
(``LORA_REQUEST_LOG``); locally ``LORA_METRICS`` defaults to ``off`` (no CloudWatch EMF metadata in those
lines) and ``LORA_TELEMETRY_DESTINATION`` to ``stdout``, unless the environment or the package sets them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lora_endpoint.local import DEFAULT_ENDPOINT_NAME, component_name_problem
from lora_endpoint.local.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY_BYTES
from lora_endpoint.packaging.limits import MAX_BYTES_HELP, MAX_MEMBERS_HELP, Limits, count_arg, size_arg

if TYPE_CHECKING:
    from lora_endpoint.local.package import PackageSpec

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
# uvicorn's own grace period ends after the endpoint's drain time, so the 503s and error records of
# the drain still reach their callers before uvicorn cancels what is left.
SHUTDOWN_MARGIN_S = 5


class _Terminated(Exception):
    """SIGTERM arrived (re-raised by uvicorn once it has shut down cleanly)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="lora-endpoint serve",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog="DJL's mode comes from the package's serving.properties (option.async_mode); a plain model dir is "
               "served in async mode unless --djl-mode sync. Sync-mode batching defaults come from serving.properties "
               "(batch_size, max_batch_delay); a plain model dir in sync mode batches up to 8 requests within "
               "50 ms. GET /metrics serves Prometheus metrics. The handler writes one JSON line per request to "
               "stdout (LORA_REQUEST_LOG=false: none); here LORA_METRICS defaults to off (no CloudWatch EMF "
               "metadata; LORA_METRICS=emf adds it) and LORA_TELEMETRY_DESTINATION to stdout, unless the "
               "environment or the package sets them. "
               "Stop with Ctrl-C: in-flight requests are answered first.",
    )
    parser.add_argument("package", help="model.tar.gz, extracted package dir, or plain model dir")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port (default: 8080, the container's)")
    parser.add_argument("--endpoint-name", default=DEFAULT_ENDPOINT_NAME,
                        help=f"name the runtime API answers to (default: {DEFAULT_ENDPOINT_NAME})")
    parser.add_argument("--base-component", default=None, metavar="NAME",
                        help="inference component name of the base model on the runtime API (InferenceComponentName); "
                             "an adapter's name selects that adapter (default: ENDPOINT_NAME-base)")
    parser.add_argument("--djl-mode", choices=("async", "sync"), default=None,
                        help="for a plain model dir (no serving.properties): async (default; the repository's "
                             "async handle, one call per request) or sync (handle_sync and the batcher); a "
                             "package's serving.properties decides its mode itself")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="sync mode: most requests per handle() call (default: serving.properties batch_size)")
    parser.add_argument("--max-batch-delay-ms", type=int, default=None,
                        help="sync mode: ms to wait for a batch to fill (default: serving.properties max_batch_delay)")
    parser.add_argument("--drain-timeout", type=float, default=60.0,
                        help="seconds in-flight requests get at shutdown (SIGTERM or Ctrl-C); after that, waiting "
                             "requests get a JSON 503 and streams end with an error record (default: 60)")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest request body accepted, checked before it is read (413 above it; default: "
                             f"{DEFAULT_MAX_BODY_BYTES}, SageMaker's 6 MB payload limit)")
    parser.add_argument("--body-timeout", type=float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="seconds a client has to send its whole request body (408 after; default: "
                             f"{DEFAULT_BODY_TIMEOUT_S:g})")
    package = parser.add_argument_group("package checks")
    package.add_argument("--max-bytes", type=size_arg, default=None, metavar="SIZE", help=MAX_BYTES_HELP)
    package.add_argument("--max-members", type=count_arg, default=None, metavar="N", help=MAX_MEMBERS_HELP)
    package.add_argument("--allow-no-manifest", action="store_true",
                         help="serve a package whose code (model.py) comes without a manifest.json, unchecked; "
                              "a package that has one is always checked against it")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                        help="log level (default: info)")
    parser.add_argument("--open", action="store_true",
                        help="open the playground page (/playground) in the default browser once the model is loaded")
    args = parser.parse_args(argv)
    problem = component_name_problem(args.base_component) if args.base_component is not None else None
    if problem:
        parser.error(f"--base-component: {problem}")
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1..65535, got {args.port}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_batch_delay_ms is not None and args.max_batch_delay_ms < 0:
        parser.error(f"--max-batch-delay-ms must be 0 or more, got {args.max_batch_delay_ms}")
    if args.max_body_bytes < 1 or args.body_timeout <= 0 or args.drain_timeout < 0:
        parser.error("--max-body-bytes and --body-timeout must be positive, --drain-timeout 0 or more")
    return args


def _open_playground(host: str, port: int) -> None:
    """The playground in the default browser, from a thread of its own (a browser may take a while to start)."""
    import threading
    import webbrowser

    from lora_endpoint.local.playground_page import page_url

    url = page_url(host, port)
    print(f"opening {url}", file=sys.stderr)
    threading.Thread(target=webbrowser.open, args=(url,), name="open-playground", daemon=True).start()


def _remove(temp_dir: Path | None) -> None:
    """The extracted archive goes away with the server."""
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _mode_problem(args: argparse.Namespace, spec: PackageSpec) -> str | None:
    """What is wrong with the mode options for this package, if anything."""
    if args.djl_mode is not None and not spec.plain:
        return (f"--djl-mode applies to a plain model dir; {spec.model_dir} has a serving.properties, whose "
                "option.async_mode decides (as in the container)")
    async_mode = spec.async_mode if args.djl_mode is None else args.djl_mode == "async"
    if async_mode and (args.batch_size is not None or args.max_batch_delay_ms is not None):
        return ("--batch-size and --max-batch-delay-ms are sync-mode settings; this package is served in DJL's async "
                "mode, where every request is its own handle() call and the engine batches them"
                + (" (add --djl-mode sync to batch a plain model dir)" if spec.plain else ""))
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import uvicorn

    from lora_endpoint.local.app import DrainingServer, create_app
    from lora_endpoint.local.metrics import with_local_settings
    from lora_endpoint.local.package import PackageError, ServedModel, resolve

    try:
        spec = resolve(args.package, limits=Limits(args.max_bytes, args.max_members),
                       allow_no_manifest=args.allow_no_manifest)
    except KeyboardInterrupt:  # during a long extraction: resolve() has removed what it wrote
        print("interrupted: nothing was left behind", file=sys.stderr)
        return 130
    except Exception as err:  # PackageError: a refused archive or manifest; OSError: the disk
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    problem = _mode_problem(args, spec)
    if problem:
        _remove(spec.temp_dir)
        print(f"error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if args.djl_mode is not None:
        spec = dataclasses.replace(spec, async_mode=args.djl_mode == "async")
    # the init call's properties: the local output defaults where neither package nor environment sets them
    spec = dataclasses.replace(spec, init_properties=with_local_settings(spec.init_properties, os.environ))
    try:
        served = ServedModel.from_spec(spec)  # model.py is imported here
    except PackageError as err:  # no handle, or one that does not match the DJL mode
        _remove(spec.temp_dir)
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    failures: list[BaseException] = []
    try:
        server: DrainingServer | None = None

        def load_failed(err: BaseException) -> None:
            failures.append(err)
            if server is not None:
                server.should_exit = True

        app = create_app(
            served,
            batch_size=args.batch_size or spec.batch_size,
            max_batch_delay_ms=spec.max_batch_delay_ms if args.max_batch_delay_ms is None else args.max_batch_delay_ms,
            endpoint_name=args.endpoint_name,
            drain_timeout_s=args.drain_timeout,
            on_load_failure=load_failed,
            on_shutdown=lambda: _remove(spec.temp_dir),
            max_body_bytes=args.max_body_bytes,
            body_timeout_s=args.body_timeout,
            base_component=args.base_component,
        )
        config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                timeout_graceful_shutdown=int(args.drain_timeout) + SHUTDOWN_MARGIN_S)
        server = DrainingServer(config, endpoint=app.state.endpoint)
        # uvicorn handles SIGTERM like Ctrl-C, then raises it again once it has stopped: without a handler
        # of ours that would kill the process with -15 after a clean drain.
        signal.signal(signal.SIGTERM, _on_sigterm)
        batching = "async mode" if spec.async_mode else f"sync mode, batch_size {args.batch_size or spec.batch_size}"
        print(f"serving {spec.model_dir} on http://{args.host}:{args.port} (endpoint name {args.endpoint_name!r}, "
              f"{batching}); docs at /docs, the playground at /playground", file=sys.stderr)
        if args.open:
            served.when_ready(lambda: _open_playground(args.host, args.port))
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass
    finally:
        _remove(spec.temp_dir)
    if failures:
        print(f"error: the model did not load: {failures[0]}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
